// Package elfcore writes and reads ELF64 core files: the format the Linux
// kernel dumps a crashed process in, and the one gdb, lldb and every other
// debugger load with `gdb <exe> <core>`.
//
// The writer is built for streaming evidence. A Core describes the whole
// file up front — notes, and one PT_LOAD segment per memory region at its
// virtual address — so its exact size is known before a single byte of
// memory is read (a tar header needs it). WriteHeader then emits everything
// up to the first segment's data, and the caller streams each segment's
// bytes in order: a multi-gigabyte core never has to be held in memory.
//
// The reader exists so that tests can check what the writer produced and
// so that the format's parsing is fuzzed; it treats its input as untrusted
// and bounds every count and size by the file it is given.
//
// Only little-endian 64-bit targets are supported (x86-64 and AArch64, the
// two architectures EC2 and Fargate run).
package elfcore

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

var (
	// ErrUnsupportedMachine is returned for an architecture whose register
	// layout this package does not know.
	ErrUnsupportedMachine = errors.New("elfcore: unsupported machine")
	// ErrFormat is returned by the reader for input that is not a well
	// formed ELF64 little-endian core file.
	ErrFormat = errors.New("elfcore: malformed core file")
)

// Sizes fixed by the ELF64 specification.
const (
	ehdrSize = 64
	phdrSize = 56
	shdrSize = 64
	// pnXNum in e_phnum means "the real count is in section header 0's
	// sh_info": how a core describes more than 65534 program headers, which
	// a process with a raised vm.max_map_count (Elasticsearch asks for
	// 262144) easily has.
	pnXNum = 0xffff
)

// Note is one ELF note: NT_PRSTATUS, NT_FILE and so on. Name is "CORE" for
// the classic notes and "LINUX" for Linux-specific register sets.
type Note struct {
	Name string
	Type elf.NType
	Desc []byte
}

// Segment is one PT_LOAD: Size bytes of memory at Vaddr, all of them present
// in the file (p_filesz == p_memsz), with the region's permissions.
type Segment struct {
	Vaddr uint64
	Size  uint64
	Flags elf.ProgFlag
}

// Core describes a core file before it is written.
type Core struct {
	Machine elf.Machine
	// Align is the alignment of the first segment's file offset; the
	// kernel uses the page size. Zero means 4096.
	Align    uint64
	Notes    []Note
	Segments []Segment
}

// noteSize is the on-disk size of one note: a 12-byte header, the name with
// its NUL, and the descriptor, each padded to 4 bytes as the kernel does for
// core notes (gdb and BFD expect 4, not the 8 the gABI suggests for ELF64).
func noteSize(n Note) uint64 {
	return 12 + align4(uint64(len(n.Name)+1)) + align4(uint64(len(n.Desc)))
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

// layout is where everything lands in the file.
type layout struct {
	phnum    uint64 // program headers, PT_NOTE included
	shoff    uint64 // 0 unless PN_XNUM is needed
	notesOff uint64
	notesLen uint64
	dataOff  uint64 // first segment's data
	size     uint64 // whole file
}

func (c *Core) layout() layout {
	var l layout
	l.phnum = 1 + uint64(len(c.Segments))
	end := uint64(ehdrSize) + l.phnum*phdrSize
	if l.phnum >= pnXNum {
		l.shoff = end
		end += shdrSize
	}
	l.notesOff = end
	for _, n := range c.Notes {
		l.notesLen += noteSize(n)
	}
	a := c.Align
	if a == 0 {
		a = 4096
	}
	l.dataOff = alignUp(l.notesOff+l.notesLen, a)
	l.size = l.dataOff
	for _, s := range c.Segments {
		l.size += s.Size
	}
	return l
}

// Size is the exact length of the file WriteHeader and the segments' data
// make together.
func (c *Core) Size() int64 { return int64(c.layout().size) }

// HeaderSize is how many bytes WriteHeader writes: the file's size less the
// segments' data.
func (c *Core) HeaderSize() int64 { return int64(c.layout().dataOff) }

// WriteHeader writes the ELF header, the program headers, the notes and the
// padding before the first segment. The caller must then write exactly
// Segments[i].Size bytes for each segment, in order.
func (c *Core) WriteHeader(w io.Writer) (int64, error) {
	if c.Machine != elf.EM_X86_64 && c.Machine != elf.EM_AARCH64 {
		return 0, fmt.Errorf("%w: %v", ErrUnsupportedMachine, c.Machine)
	}
	l := c.layout()
	bw := bufio.NewWriterSize(w, 64<<10)
	le := binary.LittleEndian

	var eh [ehdrSize]byte
	copy(eh[:], elf.ELFMAG)
	eh[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	eh[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	eh[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	eh[elf.EI_OSABI] = byte(elf.ELFOSABI_NONE)
	le.PutUint16(eh[16:], uint16(elf.ET_CORE))
	le.PutUint16(eh[18:], uint16(c.Machine))
	le.PutUint32(eh[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(eh[32:], ehdrSize) // e_phoff
	le.PutUint64(eh[40:], l.shoff)
	le.PutUint16(eh[52:], ehdrSize)
	le.PutUint16(eh[54:], phdrSize)
	if l.shoff != 0 {
		le.PutUint16(eh[56:], pnXNum)
		le.PutUint16(eh[58:], shdrSize)
		le.PutUint16(eh[60:], 1) // e_shnum: section header 0 only
	} else {
		le.PutUint16(eh[56:], uint16(l.phnum))
	}
	bw.Write(eh[:])

	var ph [phdrSize]byte
	putPhdr := func(typ elf.ProgType, flags elf.ProgFlag, off, vaddr, size, align uint64) {
		le.PutUint32(ph[0:], uint32(typ))
		le.PutUint32(ph[4:], uint32(flags))
		le.PutUint64(ph[8:], off)
		le.PutUint64(ph[16:], vaddr)
		le.PutUint64(ph[24:], 0) // p_paddr
		le.PutUint64(ph[32:], size)
		le.PutUint64(ph[40:], size)
		le.PutUint64(ph[48:], align)
		bw.Write(ph[:])
	}
	putPhdr(elf.PT_NOTE, 0, l.notesOff, 0, l.notesLen, 4)
	off := l.dataOff
	a := c.Align
	if a == 0 {
		a = 4096
	}
	for _, s := range c.Segments {
		// p_offset ≡ p_vaddr (mod p_align) is what the alignment claims;
		// a segment cut short by a byte cap may break it, and then the
		// honest alignment is 1.
		al := a
		if off%a != s.Vaddr%a {
			al = 1
		}
		putPhdr(elf.PT_LOAD, s.Flags, off, s.Vaddr, s.Size, al)
		off += s.Size
	}
	if l.shoff != 0 {
		var sh [shdrSize]byte
		le.PutUint32(sh[4:], uint32(elf.SHT_NULL))
		le.PutUint32(sh[44:], uint32(l.phnum)) // sh_info
		bw.Write(sh[:])
	}

	var nh [12]byte
	var pad [4]byte
	for _, n := range c.Notes {
		le.PutUint32(nh[0:], uint32(len(n.Name)+1))
		le.PutUint32(nh[4:], uint32(len(n.Desc)))
		le.PutUint32(nh[8:], uint32(n.Type))
		bw.Write(nh[:])
		bw.WriteString(n.Name)
		bw.Write(pad[:align4(uint64(len(n.Name)+1))-uint64(len(n.Name))])
		bw.Write(n.Desc)
		bw.Write(pad[:align4(uint64(len(n.Desc)))-uint64(len(n.Desc))])
	}
	written := l.notesOff + l.notesLen
	zeros := make([]byte, 4096)
	for written < l.dataOff {
		k := min(l.dataOff-written, uint64(len(zeros)))
		bw.Write(zeros[:k])
		written += k
	}
	// bufio keeps the first error and reports it here, so the writes above
	// need no checks of their own.
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("elfcore: write header: %w", err)
	}
	return int64(l.dataOff), nil
}
