package elfcore

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"testing"
)

// FuzzCoreRead feeds arbitrary bytes to the reader and every decoder behind it:
// whatever the input, they return an error rather than panic or allocate
// beyond the input's size.
func FuzzCoreRead(f *testing.F) {
	for _, m := range []elf.Machine{elf.EM_X86_64, elf.EM_AARCH64} {
		f.Add(build(f, sampleCore(f, m), pattern))
	}
	// A small core rewritten to count its program headers through PN_XNUM,
	// so the fuzzer starts from that path without a 65535-header seed.
	small := build(f, &Core{Machine: elf.EM_X86_64, Align: 1, Segments: []Segment{{Vaddr: 0x1000, Size: 4}}}, pattern)
	sh := make([]byte, shdrSize)
	binary.LittleEndian.PutUint32(sh[44:], 2)
	binary.LittleEndian.PutUint64(small[40:], uint64(len(small)))
	binary.LittleEndian.PutUint16(small[56:], pnXNum)
	f.Add(append(small, sh...))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Read(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		c.Threads()
		c.PRPSInfo()
		c.FileMappings()
		c.Auxv()
		p := make([]byte, 64)
		for _, l := range c.Loads {
			if l.Memsz > 0 {
				c.ReadMemory(p[:min(uint64(len(p)), l.Memsz)], l.Vaddr)
			}
		}
		for _, n := range c.Notes {
			if n.Type == NTFile {
				DecodeFileNote(n.Desc)
			}
		}
	})
}
