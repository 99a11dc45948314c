package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// watch follows a collection until it is final. On a terminal it draws one
// progress bar per artifact; otherwise it prints a line per state change,
// which is what a log or a CI job wants.
func watch(ctx context.Context, c custodyv1.ResponderServiceClient, id string, show bool, w io.Writer) (*custodyv1.Collection, error) {
	stream, err := c.WatchCollection(ctx, &custodyv1.WatchCollectionRequest{CollectionId: id})
	if err != nil {
		return nil, err
	}
	var p progress = nopProgress{}
	if show {
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			p = newBars(f)
		} else {
			p = &lines{w: w, seen: map[string]string{}}
		}
	}
	var last *custodyv1.Collection
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			p.done()
			if last == nil {
				return nil, fmt.Errorf("watch %s: stream ended before any update", id)
			}
			return last, nil
		}
		if err != nil {
			p.done()
			return nil, err
		}
		last = resp.GetCollection()
		p.update(last)
	}
}

type progress interface {
	update(*custodyv1.Collection)
	done()
}

type nopProgress struct{}

func (nopProgress) update(*custodyv1.Collection) {}
func (nopProgress) done()                        {}

type lines struct {
	w    io.Writer
	seen map[string]string
}

func (l *lines) update(c *custodyv1.Collection) {
	if s := stateName(c.GetState()); l.seen[""] != s {
		l.seen[""] = s
		fmt.Fprintf(l.w, "  %-12s %s\n", "collection", s)
	}
	for _, a := range c.GetArtifacts() {
		s := stateName(a.GetState())
		if l.seen[a.GetName()] == s {
			continue
		}
		l.seen[a.GetName()] = s
		switch {
		case a.GetError() != "":
			fmt.Fprintf(l.w, "  %-12s %s: %s\n", a.GetName(), s, a.GetError())
		case s == "complete":
			fmt.Fprintf(l.w, "  %-12s %s, %d bytes, sha256 %s\n", a.GetName(), s, a.GetRawSize(), a.GetRawSha256())
		default:
			fmt.Fprintf(l.w, "  %-12s %s\n", a.GetName(), s)
		}
	}
}

func (l *lines) done() {}

type bars struct {
	p    *mpb.Progress
	bars map[string]*mpb.Bar
}

func newBars(w io.Writer) *bars {
	return &bars{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(40)), bars: map[string]*mpb.Bar{}}
}

func (b *bars) update(c *custodyv1.Collection) {
	for _, a := range c.GetArtifacts() {
		bar, ok := b.bars[a.GetName()]
		if !ok {
			name := a.GetName()
			bar = b.p.New(0, mpb.BarStyle(),
				mpb.PrependDecorators(decor.Name(fmt.Sprintf("%-12s", name))),
				mpb.AppendDecorators(decor.Counters(decor.SizeB1024(0), "% .1f / % .1f")))
			b.bars[name] = bar
		}
		total := a.GetBytesTotal()
		if total <= 0 {
			total = max(a.GetBytesDone(), 1)
		}
		final := a.GetState() == custodyv1.ArtifactState_ARTIFACT_STATE_COMPLETE || a.GetState() == custodyv1.ArtifactState_ARTIFACT_STATE_FAILED
		if final && a.GetRawSize() > 0 {
			total = a.GetRawSize()
		}
		bar.SetTotal(total, false)
		bar.SetCurrent(min(a.GetBytesDone(), total))
		if final {
			if a.GetState() == custodyv1.ArtifactState_ARTIFACT_STATE_FAILED {
				bar.Abort(false)
			} else {
				bar.SetTotal(total, true)
			}
		}
	}
}

func (b *bars) done() {
	for _, bar := range b.bars {
		if !bar.Completed() {
			bar.Abort(false)
		}
	}
	b.p.Wait()
}
