package chunk

import (
	"io"
	"sync"
)

// Writer is an io.Writer that cuts whatever is written into raw chunks of
// exactly size bytes (the last one shorter), encodes each and hands it to
// emit, in order. Compression and the per-chunk hash run on up to workers
// goroutines at once — zstd is the costly step of the agent's pipeline —
// while the whole-stream hash is kept in order on the writing goroutine.
// Memory is bounded by workers+1 raw chunks and as many frames: this is
// what bounds the agent whatever the artifact's size.
type Writer struct {
	enc     *Encoder
	emit    func(Chunk) error
	size    int
	workers int

	raw     []byte
	pending []*job   // submitted, in stream order
	free    [][]byte // frame buffers to reuse
	freeRaw [][]byte // raw buffers to reuse
	jobs    chan *job
	wg      sync.WaitGroup
	err     error
	started bool
	closed  bool
}

type job struct {
	raw, dst []byte
	c        Chunk
	err      error
	done     chan struct{}
}

// NewWriter returns a Writer emitting chunks of size raw bytes (at most
// MaxRawSize), compressing on one goroutine. The Chunk passed to emit is
// only valid during the call.
func NewWriter(enc *Encoder, size int, emit func(Chunk) error) *Writer {
	return NewParallelWriter(enc, size, 1, emit)
}

// NewParallelWriter is NewWriter with up to workers chunks compressed at
// once. Flush must be called to release the workers.
func NewParallelWriter(enc *Encoder, size, workers int, emit func(Chunk) error) *Writer {
	if size <= 0 || size > MaxRawSize {
		size = MaxRawSize
	}
	workers = max(workers, 1)
	w := &Writer{enc: enc, emit: emit, size: size, workers: workers, jobs: make(chan *job)}
	w.raw = make([]byte, 0, size)
	return w
}

func (w *Writer) start() {
	for i := 0; i < w.workers; i++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for j := range w.jobs {
				j.c.Data, j.err = w.enc.frame(j.raw, j.dst)
				close(j.done)
			}
		}()
	}
}

// Write buffers p, submitting every full chunk.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		take := min(w.size-len(w.raw), len(p))
		w.raw = append(w.raw, p[:take]...)
		p = p[take:]
		n += take
		if len(w.raw) == w.size {
			if err := w.submit(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// ReadFrom reads r to its end straight into the chunk being filled,
// sparing the copy Write makes: for a bulk source the copy costs as much as
// a twentieth of the sender's CPU. Errors from r are returned as they are.
//
// It reads on the calling goroutine. Reading the next chunk ahead on a
// goroutine of its own, into a second buffer, was measured (BenchmarkAB,
// 5 rounds, agent and collector on 2 CPUs): 549 against 569 MiB/s, at 0.2
// CPU-s more per 2 GiB (see inline for the same cost in two other splits).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	var total int64
	for {
		if w.err != nil {
			return total, w.err
		}
		n, rerr := r.Read(w.raw[len(w.raw):w.size])
		w.raw = w.raw[:len(w.raw)+n]
		total += int64(n)
		if len(w.raw) == w.size {
			if err := w.submit(); err != nil {
				return total, err
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// submit hands the buffered chunk to a worker, first emitting the oldest
// submitted chunk if every worker is busy.
func (w *Writer) submit() error {
	if w.workers == 1 {
		return w.inline()
	}
	if !w.started {
		w.started = true
		w.start()
	}
	for len(w.pending) >= w.workers {
		if err := w.emitOldest(); err != nil {
			return err
		}
	}
	c, err := w.enc.advance(w.raw)
	if err != nil {
		w.err = err
		return err
	}
	j := &job{raw: w.raw, c: c, done: make(chan struct{})}
	if n := len(w.free); n > 0 {
		j.dst, w.free = w.free[n-1], w.free[:n-1]
	}
	w.pending = append(w.pending, j)
	w.jobs <- j
	w.raw = w.takeBuffer()
	return nil
}

// inline encodes and emits the buffered chunk on the calling goroutine: one
// raw buffer and one frame buffer, nothing else, for the smallest footprint.
//
// It is also the fastest way to send a bulk source to a collector on the
// same 2 CPUs. Two ways to split a chunk's work were measured (BenchmarkAB,
// 4 rounds): hashing it on a second goroutine while this one compresses it
// (568 against 585 MiB/s), and compressing it on one worker while the next
// chunk is read and hashed here (553 against 566). Each halved this
// goroutine's path but cost 0.2-0.3 CPU-s more per 2 GiB, and the total CPU
// time over 2 CPUs binds as much as this goroutine does. Keeping each chunk
// on one goroutine does not help either: two workers that each read, hash
// and compress whole chunks in turn, passing tokens to keep the reads, the
// stream hash and the sends in order, gave 549 against 568 MiB/s at 0.4-0.5
// CPU-s more (3 rounds).
func (w *Writer) inline() error {
	c, err := w.enc.advance(w.raw)
	if err != nil {
		w.err = err
		return err
	}
	var dst []byte
	if len(w.free) > 0 {
		dst = w.free[0]
	}
	data, err := w.enc.frame(w.raw, dst)
	if err == nil {
		if len(w.free) == 0 {
			w.free = append(w.free, data[:0])
		} else {
			w.free[0] = data[:0]
		}
		c.Data = data
		err = w.emit(c)
	}
	w.raw = w.raw[:0]
	if err != nil {
		w.err = err
	}
	return err
}

func (w *Writer) takeBuffer() []byte {
	if n := len(w.freeRaw); n > 0 {
		b := w.freeRaw[n-1]
		w.freeRaw = w.freeRaw[:n-1]
		return b[:0]
	}
	return make([]byte, 0, w.size)
}

func (w *Writer) emitOldest() error {
	j := w.pending[0]
	w.pending = w.pending[1:]
	<-j.done
	err := j.err
	if err == nil && w.err == nil {
		err = w.emit(j.c)
	}
	if j.c.Data != nil {
		w.free = append(w.free, j.c.Data[:0])
	}
	w.freeRaw = append(w.freeRaw, j.raw)
	if err != nil && w.err == nil {
		w.err = err
	}
	return w.err
}

// Flush emits the buffered partial chunk and everything still being
// compressed, then releases the workers. Nothing may be written after it.
func (w *Writer) Flush() error {
	if !w.closed {
		if w.err == nil && len(w.raw) > 0 {
			w.submit()
		}
		for len(w.pending) > 0 {
			w.emitOldest()
		}
		w.closed = true
		close(w.jobs)
		w.wg.Wait() // no-op when the workers never started
		w.free, w.freeRaw = nil, nil
	}
	return w.err
}

// Trailer returns the account of every byte submitted so far.
func (w *Writer) Trailer() Trailer { return w.enc.Trailer() }
