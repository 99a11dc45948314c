//go:build amd64 && !purego

package sha256x2

import "golang.org/x/sys/cpu"

// fast: the CPU has the SHA extensions (CPUID leaf 7, EBX bit 29) and
// the SSE and AVX encodings block2 uses.
var fast = hasSHA() && cpu.X86.HasAVX && cpu.X86.HasSSE41 && cpu.X86.HasSSSE3

//go:noescape
func block2(a, b *[8]uint32, p []byte)

func hasSHA() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, ebx, _, _ := cpuid(7, 0)
	return ebx&(1<<29) != 0
}

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
