package artifact

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"sync"

	"github.com/custodyhq/custody/internal/lime"
)

// /proc/kcore is an ELF core file of the kernel's address space: one PT_LOAD
// segment per block of the direct map of RAM, and more for the kernel text,
// vmalloc, modules and vmemmap. Each segment carries its kernel virtual
// address and, for RAM and text, its physical address, so reading RAM is a
// matter of finding, for each physical address, a segment that maps it and
// reading the file at that segment's offset. The kernel hands out whole
// pages, so a System RAM range that ends mid-page has a tail that no
// segment maps.

// kcoreSegment is one PT_LOAD segment with a physical address.
type kcoreSegment struct {
	Offset uint64 // file offset
	Vaddr  uint64
	Paddr  uint64
	Size   uint64 // bytes in the file (p_filesz)
}

var errKcoreFormat = errors.New("kcore: not a usable ELF core file")

const (
	elfHeaderSize = 64
	elfPhdrSize   = 56
	elfTypeCore   = 4
	elfPTLoad     = 1
	noPhysAddr    = ^uint64(0) // p_paddr of segments that are not RAM
	maxKcorePhdrs = 1 << 16    // e_phnum is 16 bits; PN_XNUM is refused
	maxFileOffset = 1<<63 - 1
)

// parseKcore reads the ELF header and program headers of a kcore file and
// returns the PT_LOAD segments that have a physical address.
func parseKcore(r io.ReaderAt) ([]kcoreSegment, error) {
	var eh [elfHeaderSize]byte
	if _, err := r.ReadAt(eh[:], 0); err != nil {
		return nil, fmt.Errorf("%w: ELF header: %w", errKcoreFormat, err)
	}
	le := binary.LittleEndian
	switch {
	case string(eh[:4]) != "\x7fELF":
		return nil, fmt.Errorf("%w: no ELF magic", errKcoreFormat)
	case eh[4] != 2: // ELFCLASS64
		return nil, fmt.Errorf("%w: ELF class %d, want 64-bit", errKcoreFormat, eh[4])
	case eh[5] != 1: // ELFDATA2LSB
		return nil, fmt.Errorf("%w: ELF data encoding %d, want little-endian", errKcoreFormat, eh[5])
	case le.Uint16(eh[16:]) != elfTypeCore:
		return nil, fmt.Errorf("%w: ELF type %d, want ET_CORE", errKcoreFormat, le.Uint16(eh[16:]))
	}
	phoff := le.Uint64(eh[32:])
	phentsize := le.Uint16(eh[54:])
	phnum := le.Uint16(eh[56:])
	switch {
	case phentsize != elfPhdrSize:
		return nil, fmt.Errorf("%w: program header size %d, want %d", errKcoreFormat, phentsize, elfPhdrSize)
	case phnum == 0 || phnum == 0xffff:
		return nil, fmt.Errorf("%w: %d program headers", errKcoreFormat, phnum)
	case phoff > maxFileOffset-uint64(phnum)*elfPhdrSize:
		return nil, fmt.Errorf("%w: program headers at %#x", errKcoreFormat, phoff)
	}
	ph := make([]byte, int(phnum)*elfPhdrSize)
	if _, err := r.ReadAt(ph, int64(phoff)); err != nil {
		return nil, fmt.Errorf("%w: program headers: %w", errKcoreFormat, err)
	}
	var segs []kcoreSegment
	for i := range int(phnum) {
		p := ph[i*elfPhdrSize:]
		if le.Uint32(p[0:]) != elfPTLoad {
			continue
		}
		s := kcoreSegment{Offset: le.Uint64(p[8:]), Vaddr: le.Uint64(p[16:]), Paddr: le.Uint64(p[24:]), Size: le.Uint64(p[32:])}
		if s.Paddr == noPhysAddr || s.Size == 0 || s.Paddr+s.Size < s.Paddr || s.Offset > maxFileOffset-s.Size {
			continue
		}
		segs = append(segs, s)
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("%w: no PT_LOAD segment with a physical address", errKcoreFormat)
	}
	return segs, nil
}

// piece is a run of physical memory read from one place: kcore at Offset,
// or nowhere (Offset < 0), when no segment maps it.
type piece struct {
	Phys, Len uint64
	Offset    int64
}

// planKcore maps each range to pieces. Segments of the direct map are
// preferred: they are the ones that map RAM, while the kernel text segment
// maps a part of it a second time. The direct map is the virtual-minus-
// physical offset that covers the most bytes.
func planKcore(ranges []lime.Range, segs []kcoreSegment) [][]piece {
	cover := map[uint64]uint64{}
	for _, s := range segs {
		cover[s.Vaddr-s.Paddr] += s.Size
	}
	var direct uint64
	for d, n := range cover {
		if n > cover[direct] || n == cover[direct] && d < direct {
			direct = d
		}
	}
	var first, rest []kcoreSegment
	for _, s := range segs {
		if s.Vaddr-s.Paddr == direct {
			first = append(first, s)
		} else {
			rest = append(rest, s)
		}
	}
	byPaddr := func(a, b kcoreSegment) int { return cmp.Compare(a.Paddr, b.Paddr) }
	slices.SortFunc(first, byPaddr)
	slices.SortFunc(rest, byPaddr)

	plan := make([][]piece, len(ranges))
	for i, r := range ranges {
		for _, p := range coverRange(r.First, r.Last+1, first) {
			if p.Offset >= 0 {
				plan[i] = append(plan[i], p)
				continue
			}
			plan[i] = append(plan[i], coverRange(p.Phys, p.Phys+p.Len, rest)...)
		}
	}
	return plan
}

// coverRange splits [start, end) into pieces mapped by segs (sorted by
// Paddr) and the gaps between them. Where segments overlap, the one that
// reaches further wins.
func coverRange(start, end uint64, segs []kcoreSegment) []piece {
	var out []piece
	for x := start; x < end; {
		var best *kcoreSegment
		next := end
		for i := range segs {
			s := &segs[i]
			if s.Paddr > x {
				next = min(next, s.Paddr)
				break // sorted: nothing later starts at or below x
			}
			if x < s.Paddr+s.Size && (best == nil || s.Paddr+s.Size > best.Paddr+best.Size) {
				best = s
			}
		}
		if best == nil {
			out = appendPiece(out, piece{Phys: x, Len: next - x, Offset: -1})
			x = next
			continue
		}
		stop := min(end, best.Paddr+best.Size)
		out = appendPiece(out, piece{Phys: x, Len: stop - x, Offset: int64(best.Offset + (x - best.Paddr))})
		x = stop
	}
	return out
}

// appendPiece merges p into the last piece when it continues it.
func appendPiece(ps []piece, p piece) []piece {
	if n := len(ps); n > 0 {
		l := &ps[n-1]
		if l.Phys+l.Len == p.Phys && (l.Offset < 0 && p.Offset < 0 || l.Offset >= 0 && l.Offset+int64(l.Len) == p.Offset) {
			l.Len += p.Len
			return ps
		}
	}
	return append(ps, p)
}

// kcoreReader copies planned ranges out of kcore into a LiME image.
type kcoreReader struct {
	File     io.ReaderAt
	Name     string // for messages: "/proc/kcore"
	ReadSize int    // bytes per read, a multiple of PageSize
	InFlight int    // reads outstanding at once
	PageSize int
}

// block is one unit of output, produced in order: a range header, bytes
// read from kcore, or zeros standing in for what could not be read.
type block struct {
	header  *lime.Range
	phys    uint64
	buf     []byte
	zeros   uint64
	skipped []Range
	done    chan struct{}
}

// copy writes ranges and their bytes to w. Reads run InFlight at a time,
// each ReadSize long and aligned to ReadSize in physical memory; their
// output is written in order. A read that fails is retried page by page,
// and every page that still fails is written as zeros and reported to skip
// — the image keeps its ranges exactly as /proc/iomem lists them, so a
// Volatility user sees every address where it belongs, and the manifest
// says which of them are not evidence.
func (k *kcoreReader) copy(ctx context.Context, w *lime.Writer, ranges []lime.Range, plan [][]piece, skip func(Range) error) error {
	ctx, cancel := context.WithCancel(ctx)
	queue := make(chan *block, k.InFlight)
	free := make(chan []byte, k.InFlight+2)
	for range k.InFlight + 2 {
		free <- make([]byte, k.ReadSize)
	}
	var reads sync.WaitGroup
	dispatched := make(chan struct{})
	// The file must outlive every read, whatever way copy returns: stop
	// the dispatcher, then wait for the reads it started.
	defer func() {
		cancel()
		<-dispatched
		reads.Wait()
	}()

	go func() {
		defer close(dispatched)
		defer close(queue)
		send := func(b *block) bool {
			select {
			case queue <- b:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for i, r := range ranges {
			if !send(&block{header: &r}) {
				return
			}
			for _, p := range plan[i] {
				if p.Offset < 0 {
					b := &block{phys: p.Phys, zeros: p.Len,
						skipped: []Range{{Start: p.Phys, End: p.Phys + p.Len, Reason: "not mapped by " + k.Name}}}
					if !send(b) {
						return
					}
					continue
				}
				for x := p.Phys; x < p.Phys+p.Len; {
					stop := min(p.Phys+p.Len, (x/uint64(k.ReadSize)+1)*uint64(k.ReadSize))
					var buf []byte
					select {
					case buf = <-free:
					case <-ctx.Done():
						return
					}
					b := &block{phys: x, buf: buf[:stop-x], done: make(chan struct{})}
					off := p.Offset + int64(x-p.Phys)
					reads.Add(1)
					go func() {
						defer reads.Done()
						defer close(b.done)
						k.read(b, off)
					}()
					if !send(b) {
						return
					}
					x = stop
				}
			}
		}
	}()

	for b := range queue {
		if b.done != nil {
			select {
			case <-b.done:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, s := range b.skipped {
			if err := skip(s); err != nil {
				return err
			}
		}
		switch {
		case b.header != nil:
			if err := w.Begin(*b.header); err != nil {
				return err
			}
		case b.buf != nil:
			if _, err := w.Write(b.buf); err != nil {
				return err
			}
			free <- b.buf[:cap(b.buf)]
		default:
			if err := writeZeros(w, b.zeros); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// read fills b.buf from off, falling back to page-sized reads if the large
// read fails, and zero-filling and recording each page that still fails.
func (k *kcoreReader) read(b *block, off int64) {
	if n, err := k.File.ReadAt(b.buf, off); err == nil && n == len(b.buf) {
		return
	}
	ps := uint64(k.PageSize)
	for x := b.phys; x < b.phys+uint64(len(b.buf)); {
		stop := min(b.phys+uint64(len(b.buf)), (x/ps+1)*ps)
		page := b.buf[x-b.phys : stop-b.phys]
		_, err := k.File.ReadAt(page, off+int64(x-b.phys))
		if err != nil {
			clear(page)
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			b.skipped = mergeSkipped(b.skipped, Range{Start: x, End: stop, Reason: fmt.Sprintf("read %s: %v", k.Name, unwrapPathError(err))})
		}
		x = stop
	}
}

// mergeSkipped appends r, extending the last range instead when r
// continues it for the same reason.
func mergeSkipped(rs []Range, r Range) []Range {
	if n := len(rs); n > 0 && rs[n-1].End == r.Start && rs[n-1].Reason == r.Reason {
		rs[n-1].End = r.End
		return rs
	}
	return append(rs, r)
}

// unwrapPathError drops the "read /proc/kcore:" an *fs.PathError repeats.
func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

var zeroPage [64 << 10]byte

func writeZeros(w io.Writer, n uint64) error {
	for n > 0 {
		k := min(n, uint64(len(zeroPage)))
		if _, err := w.Write(zeroPage[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
