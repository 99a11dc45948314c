package artifact

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func collect(t *testing.T, name string, env Env, p Params) ([]byte, Result) {
	t.Helper()
	k, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, err := k.Collect(context.Background(), env, p, &buf)
	if err != nil {
		t.Fatalf("collect %s: %v", name, err)
	}
	return buf.Bytes(), res
}

func TestHostGolden(t *testing.T) {
	out, res := collect(t, "host", fakeEnv(), nil)
	if !json.Valid(out) {
		t.Fatalf("host output is not valid JSON:\n%s", out)
	}
	// The architecture is the test binary's own; the golden file must not
	// depend on where the tests run.
	out = bytes.Replace(out, []byte(`"arch":"`+runtime.GOARCH+`"`), []byte(`"arch":"GOARCH"`), 1)
	golden(t, "host.golden", out)

	want := Result{Source: "procfs:" + filepath.Join("testdata", "proc"), Records: 1}
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Result (-want +got):\n%s", diff)
	}
}

func TestHostMissingFilesAreWarnings(t *testing.T) {
	empty := t.TempDir()
	out, res := collect(t, "host", Env{ProcRoot: empty, HostRoot: empty, Now: fixedNow}, nil)
	var got hostRecord
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("host output %q: %v", out, err)
	}
	want := hostRecord{Arch: runtime.GOARCH, CollectedAt: "2025-03-14T15:09:26.535897932Z"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("host record on an empty root (-want +got):\n%s", diff)
	}
	// hostname, osrelease, version, banner, boot_id, uptime, boot time, os-release.
	if len(res.Warnings) != 8 {
		t.Errorf("got %d warnings, want 8:\n%s", len(res.Warnings), strings.Join(res.Warnings, "\n"))
	}
}

func TestHostOSReleaseFallback(t *testing.T) {
	root := t.TempDir()
	lib := filepath.Join(root, "usr", "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lib, "os-release"), []byte("ID=fallback\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := fakeEnv()
	env.HostRoot = root
	out, res := collect(t, "host", env, nil)
	var got hostRecord
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"ID": "fallback"}, got.OSRelease); diff != "" {
		t.Errorf("os_release (-want +got):\n%s", diff)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("unexpected warnings: %q", res.Warnings)
	}
}

func TestParseOSRelease(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr bool
	}{
		{name: "empty", in: "", want: map[string]string{}},
		{
			name: "debian",
			in:   "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
			want: map[string]string{"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "VERSION_ID": "12", "ID": "debian"},
		},
		{
			name: "comments, blank lines and surrounding space",
			in:   "# comment\n\n   \n  ID=alpine  \n\t# indented comment\n",
			want: map[string]string{"ID": "alpine"},
		},
		{name: "single quotes are literal", in: `A='x\"$y'`, want: map[string]string{"A": `x\"$y`}},
		{name: "double-quote escapes", in: `A="a\"b\\c\$d\` + "`" + `e"`, want: map[string]string{"A": "a\"b\\c$d`e"}},
		{name: "other backslash in double quotes is kept", in: `A="C:\path\n"`, want: map[string]string{"A": `C:\path\n`}},
		{name: "unquoted escapes", in: `A=Server\ Edition\"`, want: map[string]string{"A": `Server Edition"`}},
		{name: "concatenated parts", in: `A="foo"'bar'baz`, want: map[string]string{"A": "foobarbaz"}},
		{name: "empty values", in: "A=\nB=\"\"\nC=''", want: map[string]string{"A": "", "B": "", "C": ""}},
		{name: "equals in value", in: `A="x=y"`, want: map[string]string{"A": "x=y"}},
		{name: "quoted spaces kept", in: `A="  padded  "`, want: map[string]string{"A": "  padded  "}},
		{name: "last assignment wins", in: "ID=a\nID=b", want: map[string]string{"ID": "b"}},
		{name: "CRLF line ends", in: "ID=rhel\r\nVERSION_ID=\"9\"\r\n", want: map[string]string{"ID": "rhel", "VERSION_ID": "9"}},
		{name: "utf-8 value", in: `NAME="Überlinux ✓"`, want: map[string]string{"NAME": "Überlinux ✓"}},
		{
			name:    "malformed lines skipped, the rest kept",
			in:      "ID=ok\nno equals sign\n1BAD=x\nBAD-KEY=x\nQ=\"unterminated\nS='unterminated\nVERSION_ID=1",
			want:    map[string]string{"ID": "ok", "VERSION_ID": "1"},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseOSRelease(strings.NewReader(tt.in))
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseOSRelease(%q) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func TestParseOSReleaseErrorNamesLines(t *testing.T) {
	_, err := parseOSRelease(strings.NewReader("ID=x\ngarbage\nA=\"b\n"))
	if err == nil || !strings.Contains(err.Error(), "2, 3") {
		t.Errorf("error = %v, want it to name lines 2, 3", err)
	}
}

func TestParseUptime(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{in: "301.12 177.51\n", want: 301.12},
		{in: "5\n", want: 5},
		{in: "", wantErr: true},
		{in: "up 3 days", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseUptime(strings.NewReader(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseUptime(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// quoteOSRelease writes v so that parseOSRelease reads it back unchanged.
func quoteOSRelease(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "`", "\\`")
	return `"` + r.Replace(v) + `"`
}

func FuzzParseOSRelease(f *testing.F) {
	for _, seed := range []string{
		"",
		"ID=debian\nVERSION_ID=\"12\"\n",
		`A='x'"y"\ z`,
		"# c\n\nK=\"\\\"\\$\\`\\\\\"\r\n",
		"Q=\"open\nS='open\n=\n",
		"NAME=\xff\xfe\x00\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		kv, _ := parseOSRelease(strings.NewReader(in))
		// Whatever was accepted must survive being written out the way
		// os-release(5) recommends and read back.
		var b strings.Builder
		for k, v := range kv {
			if !validEnvKey(k) {
				t.Fatalf("invalid key %q accepted from %q", k, in)
			}
			if strings.ContainsAny(v, "\n") {
				t.Fatalf("value %q for %s holds a newline", v, k)
			}
			b.WriteString(k + "=" + quoteOSRelease(v) + "\n")
		}
		again, err := parseOSRelease(strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", b.String(), err)
		}
		if diff := cmp.Diff(kv, again); diff != "" {
			t.Fatalf("round trip of %q (-first +second):\n%s", in, diff)
		}
	})
}
