// Package s3test starts a real S3-compatible server for tests: versitygw
// with its posix backend in a temporary directory, on 127.0.0.1. Tests of
// the S3 store, of the collector and the benchmarks share it, so that
// every one of them talks to the same kind of server and none to a fake.
//
// The versitygw binary is found on PATH, then in $GOBIN and $(go env
// GOPATH)/bin, where scripts/s3/ci-deps.sh installs the pinned version.
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"go/build"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custodyhq/custody/internal/testenv"
)

// Version is the versitygw release the tests are written against; CI
// installs exactly this one (scripts/s3/ci-deps.sh).
const Version = "v1.8.0"

// Region is what the server and its clients sign with.
const Region = "us-east-1"

// Binary returns the path of versitygw: on PATH, else in $GOBIN or a
// GOPATH's bin directory (where `go install` puts it).
func Binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	gopath := filepath.SplitList(build.Default.GOPATH)
	// `go env -w` settings live in go's own config file, which only the
	// go command reads.
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) == 2 {
			if lines[0] != "" {
				dirs = append(dirs, lines[0])
			}
			gopath = append(gopath, filepath.SplitList(lines[1])...)
		}
	}
	for _, gp := range gopath {
		dirs = append(dirs, filepath.Join(gp, "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found on PATH or in %s (install it with scripts/s3/ci-deps.sh, or "+
		"go install github.com/versity/versitygw/cmd/versitygw@%s)", strings.Join(dirs, ", "), Version)
}

// Server is a running versitygw.
type Server struct {
	// Endpoint is the server's URL, http://127.0.0.1:PORT.
	Endpoint             string
	AccessKey, SecretKey string
	// Dir is the posix backend's root: one directory per bucket.
	Dir string

	tb      testing.TB
	cmd     *exec.Cmd
	done    chan struct{}
	log     string
	buckets atomic.Int64
}

// Start starts a versitygw for the test and stops it when the test ends.
// A missing binary skips the test (fails it under CUSTODY_REQUIRE_ALL=1).
func Start(tb testing.TB) *Server {
	tb.Helper()
	return StartIn(tb, tb.TempDir())
}

// StartIn is Start with the server's data in a new directory under parent
// (a tmpfs, for a benchmark that should not measure the disk), removed
// when the test ends.
func StartIn(tb testing.TB, parent string) *Server {
	tb.Helper()
	bin, err := Binary()
	if err != nil {
		testenv.Skip(tb, "%v", err)
	}
	dir, err := os.MkdirTemp(parent, "versitygw-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	s, err := StartBinary(bin, dir)
	if err != nil {
		tb.Fatal(err)
	}
	s.tb = tb
	tb.Cleanup(func() {
		s.Stop()
		if tb.Failed() {
			if b, err := os.ReadFile(s.log); err == nil && len(b) > 0 {
				tb.Logf("---- versitygw log ----\n%s", tail(b, 16<<10))
			}
		}
	})
	return s
}

// StartBinary starts bin with its data under dir and waits until it
// answers. The caller must Stop it.
func StartBinary(bin, dir string) (*Server, error) {
	var lastErr error
	for range 5 {
		s, err := start(bin, dir)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func start(bin, dir string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "gw")
	versions := filepath.Join(dir, "versions")
	for _, d := range []string{root, versions} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	s := &Server{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		AccessKey: "custody-test", SecretKey: "custody-test-" + randHex(8),
		Dir: root, log: filepath.Join(dir, "versitygw.log"), done: make(chan struct{}),
	}
	lf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	// --versioning-dir enables versioning, which Object Lock needs.
	s.cmd = exec.Command(bin, "--port", fmt.Sprintf("127.0.0.1:%d", port), "--region", Region, "--quiet",
		"posix", "--versioning-dir", versions, root)
	s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	s.cmd.Stdout, s.cmd.Stderr = lf, lf
	setPdeathsig(s.cmd)
	if err := s.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	go func() { s.cmd.Wait(); lf.Close(); close(s.done) }()
	if err := s.waitReady(15 * time.Second); err != nil {
		s.Stop()
		b, _ := os.ReadFile(s.log)
		return nil, fmt.Errorf("versitygw on port %d: %w\n%s", port, err, tail(b, 4<<10))
	}
	return s, nil
}

// waitReady waits until the server answers a request signed with its own
// keys. Any answer would not do: the port was free when picked, but a
// server of a parallel test may have taken it since, and this one then
// exits (address in use) while the other answers, refusing every request
// of this test as SignatureDoesNotMatch.
func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := s.Client()
	once := func(o *s3api.Options) { o.RetryMaxAttempts = 1 }
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return errors.New("exited before it was ready")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, lastErr = c.ListBuckets(ctx, &s3api.ListBucketsInput{}, once)
		cancel()
		if lastErr == nil {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("not answering with its keys after %s: %v", timeout, lastErr)
}

// Pid is the server process's id (a benchmark reads its CPU time).
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Stop kills the server and waits for it to exit.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}

// Options configures an S3 client for the server: static credentials,
// path-style addressing.
func (s *Server) Options() func(*s3api.Options) {
	return func(o *s3api.Options) {
		o.Credentials = credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, "")
	}
}

// Env is the environment a child process (a collector) needs to reach the
// server through the SDK's standard credential chain, and nothing else.
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey, "AWS_REGION=" + Region,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=" + os.DevNull, "AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
	}
}

// Client returns an SDK client of the server, for setting up buckets and
// for reading back what a store wrote, independently of the store.
func (s *Server) Client() *s3api.Client {
	return s3api.New(s3api.Options{
		Region: Region, BaseEndpoint: aws.String(s.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
}

// Bucket creates a new, empty bucket with a unique name, with Object Lock
// enabled (and so versioning) if objectLock.
func (s *Server) Bucket(tb testing.TB, objectLock bool) string {
	tb.Helper()
	name := fmt.Sprintf("custody-%d-%s", s.buckets.Add(1), randHex(4))
	in := &s3api.CreateBucketInput{Bucket: &name}
	if objectLock {
		in.ObjectLockEnabledForBucket = aws.Bool(true)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client().CreateBucket(ctx, in); err != nil {
		tb.Fatalf("create bucket %s: %v", name, err)
	}
	return name
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) <= n {
		return string(b)
	}
	return "…" + string(b[len(b)-n:])
}
