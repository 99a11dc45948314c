package artifact

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/custodyhq/custody/internal/lime"
)

// FuzzParseIomem: no input makes the parser panic, and what it returns is
// a list a LiME writer accepts: ascending, non-overlapping, non-empty.
func FuzzParseIomem(f *testing.F) {
	for _, name := range []string{"iomem-qemu", "iomem-nested", "iomem-hidden"} {
		b, err := os.ReadFile("testdata/physmem/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add(testIomem)
	f.Add("0-ffffffffffffffff : System RAM\n")
	f.Fuzz(func(t *testing.T, in string) {
		rs, err := parseIomem(strings.NewReader(in))
		if err != nil {
			return
		}
		if len(rs) == 0 {
			t.Fatal("no ranges and no error")
		}
		for i, r := range rs {
			// Only a header is written, so the header must be one the
			// LiME format can hold.
			if _, err := lime.ParseHeader(lime.AppendHeader(nil, r.Range)); err != nil {
				t.Fatalf("range %v: %v", r, err)
			}
			if i > 0 && r.First <= rs[i-1].Last {
				t.Fatalf("ranges %v do not ascend", rs)
			}
		}
	})
}

// FuzzParseKcore: program headers from an untrusted file never panic the
// parser, and every plan covers each range exactly once, in order, with
// pieces that stay inside the segment they read from.
func FuzzParseKcore(f *testing.F) {
	f.Add(buildKcore([]kcoreSeg{{directMap + 0x1000, 0x1000, 0x3000}, {0xffffffff81000000, 0x2000, 0x1000}}), uint64(0x1000), uint64(0x5fff))
	f.Add(buildKcore([]kcoreSeg{{0xffffc90000000000, noPhysAddr, 0x1000}}), uint64(0), uint64(0xfff))
	f.Add([]byte("\x7fELF\x02\x01\x01"), uint64(0), uint64(1))
	f.Fuzz(func(t *testing.T, data []byte, first, last uint64) {
		segs, err := parseKcore(bytes.NewReader(data))
		if err != nil {
			return
		}
		r := lime.Range{First: first, Last: last}
		if first > last || last-first > 1<<40 || last == ^uint64(0) {
			return
		}
		plan := planKcore([]lime.Range{r}, segs)
		next := r.First
		for _, p := range plan[0] {
			if p.Phys != next || p.Len == 0 {
				t.Fatalf("plan %v does not tile %v", plan[0], r)
			}
			if p.Offset >= 0 {
				inside := false
				for _, s := range segs {
					if p.Phys >= s.Paddr && p.Phys+p.Len <= s.Paddr+s.Size && uint64(p.Offset) == s.Offset+(p.Phys-s.Paddr) {
						inside = true
					}
				}
				if !inside {
					t.Fatalf("piece %+v is not inside any segment of %+v", p, segs)
				}
			}
			next += p.Len
		}
		if next != r.Last+1 {
			t.Fatalf("plan %v covers up to %#x, range ends at %#x", plan[0], next, r.Last+1)
		}
	})
}
