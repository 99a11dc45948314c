package s3test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FaultKind is what the proxy does to one request.
type FaultKind int

const (
	// Pass forwards the request and its response.
	Pass FaultKind = iota
	// SlowDown answers 503 SlowDown, S3's throttling response, without
	// forwarding.
	SlowDown
	// InternalError answers 500 InternalError without forwarding.
	InternalError
	// Reset forwards the first After bytes of the request body, then
	// resets the client's connection (and drops the server's).
	Reset
	// Stall forwards the first After bytes of the request body, then moves
	// no byte either way until For has passed (or the proxy is closed),
	// then drops both connections.
	Stall
	// DropResponse forwards the whole request, lets the server act on it,
	// and resets the client's connection instead of relaying the answer:
	// the client cannot know whether its request took effect.
	DropResponse
	// Corrupt forwards the request with the byte at offset After of its
	// body flipped: what a faulty middlebox or NIC would deliver.
	Corrupt
)

func (k FaultKind) String() string {
	return [...]string{"pass", "slowdown", "internal-error", "reset", "stall", "drop-response", "corrupt"}[k]
}

// Fault is the proxy's decision for one request.
type Fault struct {
	Kind  FaultKind
	After int64
	For   time.Duration
}

// Request is what a fault decision sees of a request.
type Request struct {
	Method string
	Path   string
	Query  map[string][]string
	// Size is the request body's length (-1 if unknown).
	Size   int64
	Header http.Header
}

// Op names the S3 operation of a request the store sends.
func (r Request) Op() string {
	_, part := r.Query["partNumber"]
	_, upload := r.Query["uploadId"]
	_, uploads := r.Query["uploads"]
	switch {
	case r.Method == http.MethodPut && part && upload:
		return "UploadPart"
	case r.Method == http.MethodPost && uploads:
		return "CreateMultipartUpload"
	case r.Method == http.MethodPost && upload:
		return "CompleteMultipartUpload"
	case r.Method == http.MethodDelete && upload:
		return "AbortMultipartUpload"
	case r.Method == http.MethodGet && upload:
		return "ListParts"
	case r.Method == http.MethodPut:
		return "PutObject"
	case r.Method == http.MethodHead:
		return "HeadObject"
	case r.Method == http.MethodGet:
		return "Get"
	}
	return r.Method
}

// Proxy is a TCP proxy between an S3 client and a server that speaks
// enough HTTP/1.1 to cut the stream at request boundaries and inject the
// faults a real network and a real S3 produce: throttling, resets in the
// middle of a part, stalls and lost responses.
type Proxy struct {
	// Addr is host:port to point the client at; URL is http://Addr.
	Addr, URL string

	upstream string
	ln       net.Listener
	closed   chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	decide   func(Request) Fault
	conns    map[net.Conn]bool
	inFlight map[string]int // per Op, now
	peak     map[string]int // per Op, highest
	log      []Request

	// Injected counts the faults injected, by kind.
	injected [7]atomic.Int64
}

// NewProxy starts a proxy to upstream (host:port or http://host:port) on
// 127.0.0.1 and closes it when the test ends.
func NewProxy(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{
		Addr: ln.Addr().String(), upstream: strings.TrimPrefix(upstream, "http://"), ln: ln,
		closed: make(chan struct{}), conns: map[net.Conn]bool{}, inFlight: map[string]int{}, peak: map[string]int{},
	}
	p.URL = "http://" + p.Addr
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// SetFaults sets the decision made for every request from now on; nil
// passes everything.
func (p *Proxy) SetFaults(decide func(Request) Fault) {
	p.mu.Lock()
	p.decide = decide
	p.mu.Unlock()
}

// Injected returns how many faults of kind were injected.
func (p *Proxy) Injected(kind FaultKind) int64 { return p.injected[kind].Load() }

// Peak returns the most requests of op that were in flight at once.
func (p *Proxy) Peak(op string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak[op]
}

// Requests returns every request seen so far, in arrival order.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.log...)
}

// Close stops accepting and drops every connection.
func (p *Proxy) Close() {
	select {
	case <-p.closed:
		return
	default:
	}
	close(p.closed)
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn, on bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		select {
		case <-p.closed:
			return false
		default:
		}
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
	return true
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c, true) {
			c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.track(c, false)
			defer c.Close()
			p.serve(c)
		}()
	}
}

// serve relays one client connection's requests, one at a time (Go's
// client does not pipeline), over one server connection.
func (p *Proxy) serve(client net.Conn) {
	br := bufio.NewReader(client)
	var up net.Conn
	var upBr *bufio.Reader
	defer func() {
		if up != nil {
			p.track(up, false)
			up.Close()
		}
	}()
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		r := Request{Method: req.Method, Path: req.URL.Path, Query: req.URL.Query(), Size: req.ContentLength, Header: req.Header.Clone()}
		p.mu.Lock()
		decide := p.decide
		p.log = append(p.log, r)
		op := r.Op()
		p.inFlight[op]++
		p.peak[op] = max(p.peak[op], p.inFlight[op])
		p.mu.Unlock()
		f := Fault{}
		if decide != nil {
			f = decide(r)
		}
		if f.Kind != Pass {
			p.injected[f.Kind].Add(1)
		}
		keep := p.relay(client, req, f, &up, &upBr)
		p.mu.Lock()
		p.inFlight[op]--
		p.mu.Unlock()
		if !keep {
			return
		}
	}
}

// relay handles one request; it reports whether the connection lives on.
func (p *Proxy) relay(client net.Conn, req *http.Request, f Fault, up *net.Conn, upBr **bufio.Reader) bool {
	// The proxy answers "100 Continue" itself, so that it can read (and
	// cut) the body whatever it decides.
	if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
		req.Header.Del("Expect")
		if _, err := io.WriteString(client, "HTTP/1.1 100 Continue\r\n\r\n"); err != nil {
			return false
		}
	}
	switch f.Kind {
	case SlowDown:
		io.Copy(io.Discard, req.Body)
		return writeError(client, 503, "SlowDown", "Please reduce your request rate.") == nil && !req.Close
	case InternalError:
		io.Copy(io.Discard, req.Body)
		return writeError(client, 500, "InternalError", "We encountered an internal error. Please try again.") == nil && !req.Close
	}
	if *up == nil {
		c, err := net.Dial("tcp", p.upstream)
		if err != nil {
			writeError(client, 502, "BadGateway", err.Error())
			return false
		}
		if !p.track(c, true) {
			c.Close()
			return false
		}
		*up, *upBr = c, bufio.NewReader(c)
	}
	switch f.Kind {
	case Reset, Stall:
		req.Body = io.NopCloser(io.LimitReader(req.Body, f.After))
		// The server gets a request cut short; its connection is dropped.
		pw := &cutWriter{w: *up}
		req.Write(pw)
		if f.Kind == Stall {
			t := time.NewTimer(f.For)
			if f.For <= 0 {
				t.Stop()
			}
			select {
			case <-t.C:
			case <-p.closed:
			}
		}
		reset(client)
		return false
	}
	if f.Kind == Corrupt {
		req.Body = &flipReader{r: req.Body, at: f.After}
	}
	if err := req.Write(*up); err != nil {
		return false
	}
	resp, err := http.ReadResponse(*upBr, req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if f.Kind == DropResponse {
		io.Copy(io.Discard, resp.Body)
		reset(client)
		return false
	}
	if err := resp.Write(client); err != nil {
		return false
	}
	return !resp.Close && !req.Close
}

// flipReader flips the byte at offset at.
type flipReader struct {
	r   io.ReadCloser
	at  int64
	off int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if i := f.at - f.off; i >= 0 && i < int64(n) {
		p[i] ^= 0x01
	}
	f.off += int64(n)
	return n, err
}

func (f *flipReader) Close() error { return f.r.Close() }

// cutWriter ignores write errors: the server may close first.
type cutWriter struct{ w io.Writer }

func (c *cutWriter) Write(p []byte) (int, error) {
	c.w.Write(p)
	return len(p), nil
}

// reset closes c with a TCP RST rather than a FIN: what a client sees when
// a middlebox or a server drops it mid-request.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func writeError(w io.Writer, status int, code, msg string) error {
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><RequestId>custody-proxy</RequestId></Error>`, code, msg)
	_, err := fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nContent-Length: %s\r\n\r\n%s",
		status, http.StatusText(status), strconv.Itoa(len(body)), body)
	return err
}
