//go:build !amd64 || purego

package sha256x2

const fast = false

func block2(a, b *[8]uint32, p []byte) { panic("sha256x2: no block2 on this platform") }
