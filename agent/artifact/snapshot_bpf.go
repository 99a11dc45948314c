package artifact

// What the snapshots share to read /proc through BPF iterators
// (agent/procbpf) where they load: the method parameter, cutting the
// iterator's pid-ordered stream into per-process pieces, the fallback to
// /proc and what the manifest says of it. processes and open_files use
// it; every process an iterator did not report is read through /proc.

import (
	"context"
	"fmt"
	"io"
)

// Values of the "method" parameter of processes and open_files.
const (
	methodAuto   = "auto"   // the BPF iterator where it loads, else /proc
	methodBPF    = "bpf"    // the iterator or an error
	methodProcfs = "procfs" // /proc only
)

func parseReadMethod(p Params) (string, error) {
	switch m := p["method"]; m {
	case "", methodAuto:
		return methodAuto, nil
	case methodBPF, methodProcfs:
		return m, nil
	default:
		return "", fmt.Errorf("%w: method %q (want auto, bpf or procfs)", ErrBadParam, m)
	}
}

// pidStream cuts an iterator's stream, which is in pid order, into one
// piece per process. It is used from one goroutine (the scan's prep).
type pidStream[T any] struct {
	it interface{ Next() (T, error) }
	// pid says whose a record is.
	pid  func(T) int
	next T
	have bool
	err  error // io.EOF at the end; anything else stopped the stream early
}

// take returns the records the iterator reported for pid; ok is false
// when it reported none, or the stream failed before or within pid's
// records, and pid must be read through /proc.
func (b *pidStream[T]) take(pid int) (recs []T, ok bool) {
	for {
		if !b.have {
			if b.err != nil {
				break
			}
			r, err := b.it.Next()
			if err != nil {
				b.err = err
				if err != io.EOF {
					return nil, false // a torn piece is not a process's
				}
				break
			}
			b.next, b.have = r, true
		}
		if p := b.pid(b.next); p > pid {
			break
		} else if p == pid {
			recs = append(recs, b.next)
		}
		// Lower pids were not in the listing (born after it) or came
		// out of order; their processes are read through /proc.
		b.have = false
	}
	return recs, len(recs) > 0
}

// failed is the error that stopped the stream early, or nil.
func (b *pidStream[T]) failed() error {
	if b.err == nil || b.err == io.EOF {
		return nil
	}
	return b.err
}

// bpfDetails records in a scan's details how it read /proc: the method,
// why the iterator was not used, or why it stopped early (the processes
// after that were read through /proc).
func bpfDetails(res *Result, used bool, unavailable, failed error) {
	if res.Details == nil {
		return
	}
	res.Details["method"] = methodProcfs
	if used {
		res.Details["method"] = "bpf_iter"
	}
	if failed != nil {
		res.Details["bpf_error"] = failed.Error()
		res.Warnings = append(res.Warnings, "bpf iterator stopped early, the rest was read through /proc: "+failed.Error())
	}
	if unavailable != nil {
		res.Details["bpf_unavailable"] = unavailable.Error()
	}
}

// openIterator opens an iterator for a scan by method: nil and the reason
// when auto falls back to /proc, an error when method bpf cannot have it.
func openIterator[I any](ctx context.Context, env Env, name, method string, open func(string) (I, error)) (it I, ok bool, unavailable, err error) {
	if method == methodProcfs || ctx.Err() != nil {
		return it, false, nil, nil
	}
	if env.ProcRoot != "/proc" {
		unavailable = fmt.Errorf("bpf: procfs root is %s, not the live /proc", env.ProcRoot)
	} else if it, unavailable = open(env.ProcRoot); unavailable == nil {
		return it, true, nil, nil
	}
	if method == methodBPF {
		return it, false, nil, fmt.Errorf("%s: method bpf: %w", name, unavailable)
	}
	return it, false, unavailable, nil
}
