package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
)

// newHTTPClient returns the client every request goes through: the SDK's
// own (so that AWS_CA_BUNDLE and its TLS defaults apply) whose connections
// fail an attempt that moves no byte for stall. The SDK has no per-attempt
// timeout, and a whole-request timeout would have to allow for the slowest
// legitimate part upload, so a stalled connection would hold a part (and
// its memory) that long before the retryer could act.
func newHTTPClient(stall time.Duration) *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			sc := &stallConn{Conn: c, stall: stall}
			sc.touch()
			return sc, nil
		}
		// Parts go out in parallel; keep their connections for reuse.
		tr.MaxIdleConnsPerHost = 64
		tr.IdleConnTimeout = min(tr.IdleConnTimeout, stall/2)
	})
}

// stallConn is a connection whose reads and writes fail with a timeout
// once no byte has moved either way for stall. A read waiting for the
// response while the request body is still being written is progress, not
// a stall.
type stallConn struct {
	net.Conn
	stall   time.Duration
	last    atomic.Int64 // unix nanoseconds of the last byte moved
	stalled atomic.Bool
}

// errStalled is what every later read or write of a stalled connection
// fails with, whichever direction noticed: the transport closing the
// connection would otherwise hide the cause behind "use of closed network
// connection". It is a timeout, which the SDK's retryer retries.
type errStalled struct{ d time.Duration }

func (e errStalled) Error() string {
	return fmt.Sprintf("connection stalled: no byte moved for %s", e.d)
}
func (e errStalled) Timeout() bool   { return true }
func (e errStalled) Temporary() bool { return true }

func (c *stallConn) touch() { c.last.Store(time.Now().UnixNano()) }

func (c *stallConn) idle() time.Duration { return time.Since(time.Unix(0, c.last.Load())) }

func (c *stallConn) fail(op string, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.stalled.Store(true)
	}
	if err != nil && c.stalled.Load() {
		return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errStalled{c.stall}}
	}
	return err
}

func (c *stallConn) Read(p []byte) (int, error) {
	for {
		if err := c.Conn.SetReadDeadline(time.Now().Add(c.stall)); err != nil {
			return 0, c.fail("read", err)
		}
		n, err := c.Conn.Read(p)
		if n > 0 {
			c.touch()
		}
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && c.idle() < c.stall {
			continue // the other direction moved meanwhile
		}
		return n, c.fail("read", err)
	}
}

func (c *stallConn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.stall)); err != nil {
			return written, c.fail("write", err)
		}
		// Bounded writes, so that a slow but moving connection renews its
		// deadline rather than timing out one large write.
		n, err := c.Conn.Write(p[written:min(len(p), written+64<<10)])
		written += n
		if n > 0 {
			c.touch()
		}
		if err != nil {
			return written, c.fail("write", err)
		}
	}
	return written, nil
}
