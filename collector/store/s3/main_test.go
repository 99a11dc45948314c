package s3_test

import (
	"flag"
	"os"
	"testing"
)

// TestMain raises the default parallelism: these tests spend their time
// waiting on round trips to a versitygw process (and on injected stalls
// and backoffs), not on the test binary's CPU, so GOMAXPROCS parallel
// tests on a 2-core machine leave both idle. An explicit -parallel wins.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		flag.Set("test.parallel", "8")
	}
	os.Exit(m.Run())
}
