package artifact

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/custodyhq/custody/internal/lime"
)

// A synthetic machine for the physical-memory tests: its RAM content is a
// function of the address, so any byte of an image can be checked without
// keeping a copy of the memory.

// memAt fills b with the memory at physical address phys: each aligned
// 8-byte word holds its own address, scrambled.
func memAt(phys uint64, b []byte) {
	for i := range b {
		a := phys + uint64(i)
		w := (a &^ 7) * 0x9E3779B97F4A7C15
		b[i] = byte(w >> (8 * (a & 7)))
	}
}

const directMap = 0xffff888000000000

// kcoreSeg describes a PT_LOAD of a synthetic kcore: phys == noPhysAddr for
// segments that are not RAM.
type kcoreSeg struct {
	vaddr, phys, size uint64
}

// writeKcore writes an ELF core file shaped like /proc/kcore: a PT_NOTE,
// then one PT_LOAD per segment, each segment's bytes being memAt(phys).
func writeKcore(t testing.TB, path string, segs []kcoreSeg) {
	t.Helper()
	if err := os.WriteFile(path, buildKcore(segs), 0o400); err != nil {
		t.Fatal(err)
	}
}

func buildKcore(segs []kcoreSeg) []byte {
	le := binary.LittleEndian
	phnum := 1 + len(segs)
	dataOff := uint64(elfHeaderSize + phnum*elfPhdrSize)
	dataOff = (dataOff + 4095) &^ 4095
	var b []byte
	b = append(b, "\x7fELF"...)
	b = append(b, 2, 1, 1, 0)
	b = append(b, make([]byte, 8)...)
	b = le.AppendUint16(b, elfTypeCore)
	b = le.AppendUint16(b, 62) // EM_X86_64
	b = le.AppendUint32(b, 1)
	b = le.AppendUint64(b, 0)             // entry
	b = le.AppendUint64(b, elfHeaderSize) // phoff
	b = le.AppendUint64(b, 0)             // shoff
	b = le.AppendUint32(b, 0)             // flags
	b = le.AppendUint16(b, elfHeaderSize)
	b = le.AppendUint16(b, elfPhdrSize)
	b = le.AppendUint16(b, uint16(phnum))
	b = le.AppendUint16(b, 64) // shentsize
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	phdr := func(typ uint32, off, vaddr, paddr, size uint64) {
		b = le.AppendUint32(b, typ)
		b = le.AppendUint32(b, 7)
		b = le.AppendUint64(b, off)
		b = le.AppendUint64(b, vaddr)
		b = le.AppendUint64(b, paddr)
		b = le.AppendUint64(b, size)
		b = le.AppendUint64(b, size)
		b = le.AppendUint64(b, 4096)
	}
	phdr(4, 0, 0, 0, 0) // PT_NOTE
	off := dataOff
	for _, s := range segs {
		phdr(elfPTLoad, off, s.vaddr, s.phys, s.size)
		off += s.size
	}
	b = append(b, make([]byte, dataOff-uint64(len(b)))...)
	for _, s := range segs {
		seg := make([]byte, s.size)
		if s.phys != noPhysAddr {
			memAt(s.phys, seg)
		} else {
			for i := range seg {
				seg[i] = 0xee
			}
		}
		b = append(b, seg...)
	}
	return b
}

// writeModule writes a minimal ELF relocatable object with a .modinfo
// section: enough for FindLimeModule, which is all a fake loader needs.
func writeModule(t testing.TB, path, vermagic string, signed bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	modinfo := []byte("license=GPL\x00name=lime\x00vermagic=" + vermagic + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	modOff := uint64(64)
	strOff := modOff + uint64(len(modinfo))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var b []byte
	b = append(b, "\x7fELF"...)
	b = append(b, 2, 1, 1, 0)
	b = append(b, make([]byte, 8)...)
	b = le.AppendUint16(b, 1) // ET_REL
	b = le.AppendUint16(b, 62)
	b = le.AppendUint32(b, 1)
	b = le.AppendUint64(b, 0)
	b = le.AppendUint64(b, 0)
	b = le.AppendUint64(b, shOff)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint16(b, 64)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint16(b, 64)
	b = le.AppendUint16(b, 3) // shnum
	b = le.AppendUint16(b, 2) // shstrndx
	b = append(b, modinfo...)
	b = append(b, shstr...)
	b = append(b, make([]byte, shOff-uint64(len(b)))...)
	shdr := func(name, typ uint32, off, size uint64) {
		b = le.AppendUint32(b, name)
		b = le.AppendUint32(b, typ)
		b = le.AppendUint64(b, 0) // flags
		b = le.AppendUint64(b, 0) // addr
		b = le.AppendUint64(b, off)
		b = le.AppendUint64(b, size)
		b = le.AppendUint32(b, 0)
		b = le.AppendUint32(b, 0)
		b = le.AppendUint64(b, 1)
		b = le.AppendUint64(b, 0)
	}
	shdr(0, 0, 0, 0)
	shdr(1, 1, modOff, uint64(len(modinfo))) // .modinfo, SHT_PROGBITS
	shdr(10, 3, strOff, uint64(len(shstr)))  // .shstrtab, SHT_STRTAB
	if signed {
		b = append(b, []byte("\x00\x00sig")...)
		b = append(b, moduleSigMagic...)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// wantImage is the image of ranges built independently of the code under
// test: memory where nothing is listed in holes, zeros where it is.
func wantImage(ranges []lime.Range, holes []Range) []byte {
	var b bytes.Buffer
	for _, r := range ranges {
		b.Write(lime.AppendHeader(nil, r))
		data := make([]byte, r.Len())
		memAt(r.First, data)
		for _, h := range holes {
			lo, hi := max(h.Start, r.First), min(h.End, r.Last+1)
			if lo < hi {
				clear(data[lo-r.First : hi-r.First])
			}
		}
		b.Write(data)
	}
	return b.Bytes()
}
