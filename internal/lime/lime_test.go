package lime

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// image builds an image by hand, independent of Writer, so the Reader is
// tested against the format rather than against its twin.
func image(parts ...any) []byte {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case Range:
			b = AppendHeader(b, p)
		case []byte:
			b = append(b, p...)
		case int:
			b = append(b, make([]byte, p)...)
		}
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	ranges := []Range{{0x1000, 0x9fbff}, {0x100000, 0x1fffff}, {0x100000000, 0x100000fff}}
	rng := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	w := NewWriter(&buf)
	var want [][]byte
	for _, r := range ranges {
		if err := w.Begin(r); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, r.Len())
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		want = append(want, data)
		// Odd-sized writes: a range need not arrive in one piece.
		for len(data) > 0 {
			n := min(len(data), 1+rng.IntN(70000))
			if _, err := w.Write(data[:n]); err != nil {
				t.Fatal(err)
			}
			data = data[n:]
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := uint64(buf.Len()), Size(ranges); got != want {
		t.Fatalf("image is %d bytes, Size says %d", got, want)
	}

	r := NewReader(bytes.NewReader(buf.Bytes()))
	var gotRanges []Range
	var got [][]byte
	for {
		rg, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		gotRanges = append(gotRanges, rg)
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, data)
	}
	if diff := cmp.Diff(ranges, gotRanges); diff != "" {
		t.Errorf("ranges (-want +got):\n%s", diff)
	}
	for i := range want {
		if !bytes.Equal(want[i], got[i]) {
			t.Errorf("range %d: data differs", i)
		}
	}
}

func TestHeaderBytes(t *testing.T) {
	// The on-disk header, byte for byte, as LiME's lime_mem_range_header.
	want := []byte{
		0x45, 0x4d, 0x69, 0x4c, // magic 0x4C694D45
		1, 0, 0, 0, // version
		0x00, 0x10, 0, 0, 0, 0, 0, 0, // start 0x1000
		0xff, 0xfb, 0x09, 0, 0, 0, 0, 0, // end 0x9fbff
		0, 0, 0, 0, 0, 0, 0, 0, // reserved
	}
	if diff := cmp.Diff(want, AppendHeader(nil, Range{0x1000, 0x9fbff})); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
}

func TestReaderRejects(t *testing.T) {
	bad := func(mut func([]byte)) []byte {
		b := image(Range{0, 15}, 16)
		mut(b)
		return b
	}
	tests := []struct {
		name string
		img  []byte
	}{
		{"empty", nil},
		{"bad magic", bad(func(b []byte) { b[0] = 'x' })},
		{"version 2", bad(func(b []byte) { b[4] = 2 })},
		{"version 0", bad(func(b []byte) { b[4] = 0 })},
		{"reserved not zero", bad(func(b []byte) { b[31] = 1 })},
		{"end before start", image(Range{16, 15})},
		{"whole address space", image(Range{0, ^uint64(0)})},
		{"truncated header", image(Range{0, 15}, 16)[:20]},
		{"truncated range", image(Range{0, 15}, 15)},
		{"trailing byte", image(Range{0, 15}, 17)},
		{"trailing half header", image(Range{0, 15}, 16, 31)},
		{"trailing zeros header", image(Range{0, 15}, 16, 32)},
		{"overlap", image(Range{0, 15}, 16, Range{8, 23}, 16)},
		// Volatility 3 lets start == previous end through; it is still an
		// overlap of one byte.
		{"touching end", image(Range{0, 15}, 16, Range{15, 30}, 16)},
		{"descending", image(Range{32, 47}, 16, Range{0, 15}, 16)},
		{"duplicate", image(Range{0, 15}, 16, Range{0, 15}, 16)},
		{"second range truncated", image(Range{0, 15}, 16, Range{16, 31}, 3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Validate(bytes.NewReader(tt.img))
			if !errors.Is(err, ErrFormat) {
				t.Errorf("Validate = %v, want an error wrapping ErrFormat", err)
			}
		})
	}
}

func TestReaderAccepts(t *testing.T) {
	tests := []struct {
		name string
		img  []byte
		want []Range
	}{
		{"one byte", image(Range{7, 7}, 1), []Range{{7, 7}}},
		{"adjacent", image(Range{0, 15}, 16, Range{16, 31}, 16), []Range{{0, 15}, {16, 31}}},
		{"top of address space", image(Range{^uint64(0) - 3, ^uint64(0)}, 4), []Range{{^uint64(0) - 3, ^uint64(0)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Validate(bytes.NewReader(tt.img))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ranges (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriterRefuses(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.Close(); err == nil {
		t.Error("Close of an image without ranges succeeded")
	}
	if err := w.Begin(Range{10, 9}); err == nil {
		t.Error("Begin of an inverted range succeeded")
	}
	if err := w.Begin(Range{0, 15}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 17)); err == nil {
		t.Error("writing past the range succeeded")
	}
	if err := w.Begin(Range{16, 31}); err == nil {
		t.Error("Begin before the previous range was full succeeded")
	}
	if err := w.Close(); err == nil {
		t.Error("Close with a short range succeeded")
	}
	w.Write(make([]byte, 16))
	for _, r := range []Range{{15, 20}, {0, 3}} {
		if err := w.Begin(r); err == nil {
			t.Errorf("Begin(%v) after {0,15} succeeded", r)
		}
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close of a complete image: %v", err)
	}
}

// FuzzReader: whatever the bytes, the Reader neither panics nor accepts an
// image the Writer could not have produced, and what it accepts re-encodes
// to the same bytes.
func FuzzReader(f *testing.F) {
	f.Add(image(Range{0x1000, 0x100f}, 16))
	f.Add(image(Range{0, 15}, 16, Range{16, 31}, 16))
	f.Add(image(Range{0, 15}, 16, Range{15, 30}, 16))
	f.Add(image(Range{0, 15}, 16, 1))
	f.Add(image(Range{0, 1 << 40}, 8))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data))
		var out bytes.Buffer
		w := NewWriter(&out)
		for {
			rg, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				if !errors.Is(err, ErrFormat) {
					t.Fatalf("error %v does not wrap ErrFormat", err)
				}
				return
			}
			if err := w.Begin(rg); err != nil {
				t.Fatalf("Reader accepted %v, Writer refuses it: %v", rg, err)
			}
			if _, err := io.Copy(w, r); err != nil {
				if errors.Is(err, ErrFormat) {
					return
				}
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Reader accepted an image the Writer cannot close: %v", err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatal("accepted image does not re-encode to the same bytes")
		}
	})
}
