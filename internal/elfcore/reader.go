package elfcore

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// ErrNotMapped is returned by ReadMemory for an address no segment covers.
var ErrNotMapped = errors.New("elfcore: address not in the core")

// Load is one PT_LOAD segment as found in a file.
type Load struct {
	Vaddr, Memsz, Filesz, Offset uint64
	Flags                        elf.ProgFlag
	Align                        uint64
}

// File is a parsed core file. Notes are held in memory; segment data is
// read from the underlying ReaderAt on demand.
type File struct {
	Machine elf.Machine
	Notes   []Note
	Loads   []Load // in file order
	r       io.ReaderAt
	sorted  []Load // by Vaddr, for ReadMemory
}

// maxNotes bounds how many notes Read accepts, so that a forged PT_NOTE of
// tiny notes cannot make the reader allocate without limit.
const maxNotes = 1 << 20

// Read parses the ELF header, program headers and notes of a core file of
// the given size.
func Read(r io.ReaderAt, size int64) (*File, error) {
	if size < ehdrSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than an ELF header", ErrFormat, size)
	}
	var eh [ehdrSize]byte
	if _, err := r.ReadAt(eh[:], 0); err != nil {
		return nil, fmt.Errorf("elfcore: read ELF header: %w", err)
	}
	if string(eh[:4]) != elf.ELFMAG {
		return nil, fmt.Errorf("%w: no ELF magic", ErrFormat)
	}
	if elf.Class(eh[elf.EI_CLASS]) != elf.ELFCLASS64 || elf.Data(eh[elf.EI_DATA]) != elf.ELFDATA2LSB {
		return nil, fmt.Errorf("%w: not ELF64 little-endian", ErrFormat)
	}
	le := binary.LittleEndian
	if t := elf.Type(le.Uint16(eh[16:])); t != elf.ET_CORE {
		return nil, fmt.Errorf("%w: e_type %v, want ET_CORE", ErrFormat, t)
	}
	f := &File{Machine: elf.Machine(le.Uint16(eh[18:])), r: r}
	phoff, shoff := le.Uint64(eh[32:]), le.Uint64(eh[40:])
	phentsize, phnum := le.Uint16(eh[54:]), uint64(le.Uint16(eh[56:]))
	if phentsize != phdrSize {
		return nil, fmt.Errorf("%w: e_phentsize %d, want %d", ErrFormat, phentsize, phdrSize)
	}
	if phnum == pnXNum {
		if shoff == 0 || !within(shoff, shdrSize, size) {
			return nil, fmt.Errorf("%w: PN_XNUM without a section header 0", ErrFormat)
		}
		var sh [shdrSize]byte
		if _, err := r.ReadAt(sh[:], int64(shoff)); err != nil {
			return nil, fmt.Errorf("elfcore: read section header 0: %w", err)
		}
		phnum = uint64(le.Uint32(sh[44:]))
	}
	if phnum > uint64(size)/phdrSize || !within(phoff, phnum*phdrSize, size) {
		return nil, fmt.Errorf("%w: %d program headers at %#x do not fit in %d bytes", ErrFormat, phnum, phoff, size)
	}
	phdrs := make([]byte, phnum*phdrSize)
	if _, err := r.ReadAt(phdrs, int64(phoff)); err != nil {
		return nil, fmt.Errorf("elfcore: read program headers: %w", err)
	}
	var noteBytes uint64
	for i := range phnum {
		ph := phdrs[i*phdrSize:]
		typ := elf.ProgType(le.Uint32(ph[0:]))
		l := Load{
			Flags: elf.ProgFlag(le.Uint32(ph[4:])), Offset: le.Uint64(ph[8:]), Vaddr: le.Uint64(ph[16:]),
			Filesz: le.Uint64(ph[32:]), Memsz: le.Uint64(ph[40:]), Align: le.Uint64(ph[48:]),
		}
		if !within(l.Offset, l.Filesz, size) {
			return nil, fmt.Errorf("%w: segment %d [%#x+%#x) lies outside the file", ErrFormat, i, l.Offset, l.Filesz)
		}
		switch typ {
		case elf.PT_LOAD:
			if l.Filesz > l.Memsz || l.Vaddr+l.Memsz < l.Vaddr {
				return nil, fmt.Errorf("%w: PT_LOAD %d at %#x: filesz %#x, memsz %#x", ErrFormat, i, l.Vaddr, l.Filesz, l.Memsz)
			}
			f.Loads = append(f.Loads, l)
		case elf.PT_NOTE:
			// Overlapping PT_NOTEs could otherwise multiply the file's
			// size in memory.
			if noteBytes += l.Filesz; noteBytes > uint64(size) {
				return nil, fmt.Errorf("%w: notes larger than the file", ErrFormat)
			}
			buf := make([]byte, l.Filesz)
			if _, err := r.ReadAt(buf, int64(l.Offset)); err != nil {
				return nil, fmt.Errorf("elfcore: read notes: %w", err)
			}
			notes, err := parseNotes(buf, maxNotes-len(f.Notes))
			if err != nil {
				return nil, err
			}
			f.Notes = append(f.Notes, notes...)
		}
	}
	f.sorted = append([]Load(nil), f.Loads...)
	sort.Slice(f.sorted, func(i, j int) bool { return f.sorted[i].Vaddr < f.sorted[j].Vaddr })
	return f, nil
}

// within reports whether [off, off+n) fits in a file of size bytes.
func within(off, n uint64, size int64) bool {
	return off+n >= off && off+n <= uint64(size)
}

func parseNotes(b []byte, limit int) ([]Note, error) {
	le := binary.LittleEndian
	var notes []Note
	for len(b) > 0 {
		if len(b) < 12 {
			return nil, fmt.Errorf("%w: %d stray bytes after the last note", ErrFormat, len(b))
		}
		if len(notes) >= limit {
			return nil, fmt.Errorf("%w: more than %d notes", ErrFormat, maxNotes)
		}
		namesz, descsz := uint64(le.Uint32(b[0:])), uint64(le.Uint32(b[4:]))
		typ := elf.NType(le.Uint32(b[8:]))
		b = b[12:]
		if align4(namesz) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: note name of %d bytes overruns PT_NOTE", ErrFormat, namesz)
		}
		name := b[:namesz]
		b = b[align4(namesz):]
		if align4(descsz) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: note %s type %#x: descriptor of %d bytes overruns PT_NOTE", ErrFormat, cstring(name), uint32(typ), descsz)
		}
		notes = append(notes, Note{Name: cstring(name), Type: typ, Desc: b[:descsz:descsz]})
		b = b[align4(descsz):]
	}
	return notes, nil
}

// ReadMemory reads len(p) bytes of the captured process's memory at addr,
// across segments if they are adjacent. Bytes past a segment's file size
// (p_memsz > p_filesz) read as zeros, as the kernel's own cores mean them.
func (f *File) ReadMemory(p []byte, addr uint64) (int, error) {
	n := 0
	for n < len(p) {
		a := addr + uint64(n)
		if a < addr {
			return n, fmt.Errorf("%w: %#x", ErrNotMapped, a)
		}
		i := sort.Search(len(f.sorted), func(i int) bool { return f.sorted[i].Vaddr+f.sorted[i].Memsz > a })
		if i == len(f.sorted) || f.sorted[i].Vaddr > a {
			return n, fmt.Errorf("%w: %#x", ErrNotMapped, a)
		}
		l := f.sorted[i]
		off := a - l.Vaddr
		k := int(min(uint64(len(p)-n), l.Memsz-off))
		if off < l.Filesz {
			k = int(min(uint64(k), l.Filesz-off))
			if _, err := f.r.ReadAt(p[n:n+k], int64(l.Offset+off)); err != nil {
				return n, fmt.Errorf("elfcore: read %#x: %w", a, err)
			}
		} else {
			clear(p[n : n+k])
		}
		n += k
	}
	return n, nil
}

// Note returns the first note of type t named name.
func (f *File) Note(name string, t elf.NType) (Note, bool) {
	for _, n := range f.Notes {
		if n.Name == name && n.Type == t {
			return n, true
		}
	}
	return Note{}, false
}

// Threads decodes every NT_PRSTATUS, in file order: the first is the thread
// a debugger selects.
func (f *File) Threads() ([]PRStatus, error) {
	a, err := ArchOf(f.Machine)
	if err != nil {
		return nil, err
	}
	var ts []PRStatus
	for _, n := range f.Notes {
		if n.Name == "CORE" && n.Type == elf.NT_PRSTATUS {
			s, err := DecodePRStatus(a, n.Desc)
			if err != nil {
				return nil, err
			}
			ts = append(ts, s)
		}
	}
	return ts, nil
}

// PRPSInfo decodes the NT_PRPSINFO note.
func (f *File) PRPSInfo() (PRPSInfo, error) {
	n, ok := f.Note("CORE", elf.NT_PRPSINFO)
	if !ok {
		return PRPSInfo{}, fmt.Errorf("%w: no NT_PRPSINFO", ErrFormat)
	}
	return DecodePRPSInfo(n.Desc)
}

// FileMappings decodes the NT_FILE note.
func (f *File) FileMappings() ([]FileMapping, error) {
	n, ok := f.Note("CORE", NTFile)
	if !ok {
		return nil, fmt.Errorf("%w: no NT_FILE", ErrFormat)
	}
	_, maps, err := DecodeFileNote(n.Desc)
	return maps, err
}

// Auxv decodes NT_AUXV into its (type, value) pairs, up to AT_NULL.
func (f *File) Auxv() ([][2]uint64, error) {
	n, ok := f.Note("CORE", NTAuxv)
	if !ok {
		return nil, fmt.Errorf("%w: no NT_AUXV", ErrFormat)
	}
	var av [][2]uint64
	for b := n.Desc; len(b) >= 16; b = b[16:] {
		t, v := binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint64(b[8:])
		if t == 0 {
			break
		}
		av = append(av, [2]uint64{t, v})
	}
	return av, nil
}
