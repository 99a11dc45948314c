package artifact

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/custodyhq/custody/internal/lime"
)

// ErrIomemHidden is returned when /proc/iomem shows every address as zero,
// which is what the kernel shows a reader without CAP_SYS_ADMIN.
var ErrIomemHidden = errors.New("/proc/iomem hides its addresses (needs root: CAP_SYS_ADMIN)")

// ramRange is one "System RAM" resource of /proc/iomem.
type ramRange struct {
	lime.Range
	// TopLevel is false for a System RAM entry nested under another
	// resource. The LiME module walks only the top level of the resource
	// tree, so it does not dump nested entries.
	TopLevel bool
}

// maxIomem bounds the read of /proc/iomem: a few KiB on a VM, tens of KiB
// on a large server with many PCI devices.
const maxIomem = 4 << 20

// readIomem reads the System RAM ranges of procRoot/iomem.
func readIomem(procRoot string) ([]ramRange, error) {
	path := filepath.Join(procRoot, "iomem")
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rs, err := parseIomem(io.LimitReader(f, maxIomem))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rs, nil
}

// parseIomem returns the "System RAM" ranges of an iomem listing, ascending.
// Entries nest by two spaces of indentation per level; System RAM counts at
// any depth, except inside another System RAM entry, which already covers
// it.
func parseIomem(r io.Reader) ([]ramRange, error) {
	type open struct {
		depth int
		ram   bool
	}
	var (
		out    []ramRange
		stack  []open // ancestors of the current line
		hidden = true
		lineNo int
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		body := strings.TrimLeft(line, " ")
		depth := len(line) - len(body)
		span, name, ok := strings.Cut(body, " : ")
		if !ok {
			return nil, fmt.Errorf("line %d: %q: no \" : \"", lineNo, line)
		}
		lo, hi, ok := strings.Cut(span, "-")
		if !ok {
			return nil, fmt.Errorf("line %d: %q: no start-end", lineNo, line)
		}
		first, err1 := strconv.ParseUint(lo, 16, 64)
		last, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("line %d: %q: bad address", lineNo, line)
		}
		if first != 0 || last != 0 {
			hidden = false
		}
		for len(stack) > 0 && stack[len(stack)-1].depth >= depth {
			stack = stack[:len(stack)-1]
		}
		insideRAM := slices.ContainsFunc(stack, func(o open) bool { return o.ram })
		ram := name == "System RAM"
		stack = append(stack, open{depth: depth, ram: ram})
		if !ram || insideRAM {
			continue
		}
		if first > last || last-first == ^uint64(0) {
			return nil, fmt.Errorf("line %d: %q: bad range", lineNo, line)
		}
		out = append(out, ramRange{Range: lime.Range{First: first, Last: last}, TopLevel: len(stack) == 1})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if hidden && lineNo > 0 {
		return nil, ErrIomemHidden
	}
	if len(out) == 0 {
		return nil, errors.New("no System RAM ranges")
	}
	slices.SortFunc(out, func(a, b ramRange) int {
		switch {
		case a.First < b.First:
			return -1
		case a.First > b.First:
			return 1
		}
		return 0
	})
	for i := 1; i < len(out); i++ {
		if out[i].First <= out[i-1].Last {
			return nil, fmt.Errorf("ranges of System RAM %v and %v overlap", out[i-1].Range, out[i].Range)
		}
	}
	return out, nil
}

func limeRanges(rs []ramRange) []lime.Range {
	out := make([]lime.Range, len(rs))
	for i, r := range rs {
		out[i] = r.Range
	}
	return out
}
