package chunk

// Writer is an io.Writer that cuts whatever is written into raw chunks of
// exactly size bytes (the last one shorter), encodes each and hands it to
// emit. It holds one raw chunk and one frame buffer, never more: this is
// what bounds the agent's memory whatever the artifact's size.
type Writer struct {
	enc  *Encoder
	emit func(Chunk) error
	raw  []byte
	dst  []byte
	size int
	err  error
}

// NewWriter returns a Writer emitting chunks of size raw bytes (at most
// MaxRawSize). The Chunk passed to emit is only valid during the call.
func NewWriter(enc *Encoder, size int, emit func(Chunk) error) *Writer {
	if size <= 0 || size > MaxRawSize {
		size = MaxRawSize
	}
	return &Writer{enc: enc, emit: emit, raw: make([]byte, 0, size), size: size}
}

// Write buffers p, emitting every full chunk.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		room := w.size - len(w.raw)
		take := min(room, len(p))
		w.raw = append(w.raw, p[:take]...)
		p = p[take:]
		n += take
		if len(w.raw) == w.size {
			if err := w.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// Flush emits the buffered partial chunk, if any.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.raw) == 0 {
		return nil
	}
	return w.flush()
}

func (w *Writer) flush() error {
	c, err := w.enc.Encode(w.raw, w.dst)
	if err == nil {
		w.dst = c.Data
		err = w.emit(c)
	}
	w.raw = w.raw[:0]
	if err != nil {
		w.err = err
	}
	return err
}

// Trailer returns the account of every byte emitted so far.
func (w *Writer) Trailer() Trailer { return w.enc.Trailer() }
