package artifact

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

func init() {
	register(Kind{
		Name:    "host",
		Ext:     "json",
		Doc:     "host facts: hostname, kernel, os-release, boot id, uptime and boot time",
		Collect: collectHost,
	})
}

type hostKernel struct {
	Release string `json:"release"`
	Version string `json:"version"`
	Banner  string `json:"banner"`
}

// hostRecord is the host artifact. Fields that could not be read stay empty
// (or null) and the reason goes to Result.Warnings, so that one unreadable
// file never costs the responder the rest.
type hostRecord struct {
	Hostname      string            `json:"hostname"`
	Kernel        hostKernel        `json:"kernel"`
	Arch          string            `json:"arch"`
	OSRelease     map[string]string `json:"os_release"`
	BootID        string            `json:"boot_id"`
	UptimeSeconds *float64          `json:"uptime_seconds"`
	BootTime      string            `json:"boot_time"`
	CollectedAt   string            `json:"collected_at"`
}

func collectHost(ctx context.Context, env Env, _ Params, w io.Writer) (Result, error) {
	res := Result{Source: "procfs:" + env.ProcRoot}
	warn := warnings{log: env.Logger}
	if err := ctx.Err(); err != nil {
		return res, err
	}

	proc := func(name string) string { return filepath.Join(env.ProcRoot, name) }
	line := func(path string) string {
		b, err := readSmall(path)
		if err != nil {
			warn.add("%v", err)
			return ""
		}
		return string(bytes.TrimRight(b, "\n"))
	}

	rec := hostRecord{
		Hostname: line(proc("sys/kernel/hostname")),
		Kernel: hostKernel{
			Release: line(proc("sys/kernel/osrelease")),
			Version: line(proc("sys/kernel/version")),
			Banner:  line(proc("version")),
		},
		Arch:        runtime.GOARCH,
		BootID:      line(proc("sys/kernel/random/boot_id")),
		CollectedAt: env.Now().UTC().Format(time.RFC3339Nano),
	}

	if b, err := readSmall(proc("uptime")); err != nil {
		warn.add("%v", err)
	} else if up, err := parseUptime(bytes.NewReader(b)); err != nil {
		warn.add("%s: %v", proc("uptime"), err)
	} else {
		rec.UptimeSeconds = &up
	}

	if bt, err := bootTime(env.ProcRoot); err != nil {
		warn.add("%v", err)
	} else {
		rec.BootTime = bt.Format(time.RFC3339)
	}

	rec.OSRelease = readOSRelease(env.HostRoot, &warn)

	if err := ctx.Err(); err != nil {
		return res, err
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(rec); err != nil {
		return res, fmt.Errorf("write host artifact: %w", err)
	}
	res.Records = 1
	res.Warnings = warn.result()
	return res, nil
}

// bootTime reads btime from <procRoot>/stat, the clock start_time in the
// processes artifact is relative to as well.
func bootTime(procRoot string) (time.Time, error) {
	pfs, err := procfs.NewFS(procRoot)
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	st, err := pfs.Stat()
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	if st.BootTime == 0 {
		return time.Time{}, fmt.Errorf("boot time: no btime in %s", filepath.Join(procRoot, "stat"))
	}
	return time.Unix(int64(st.BootTime), 0).UTC(), nil
}

// readOSRelease follows os-release(5): /etc/os-release wins and
// /usr/lib/os-release is the vendor fallback. A missing file is a warning:
// minimal container images ship neither.
func readOSRelease(hostRoot string, warn *warnings) map[string]string {
	var missing []string
	for _, name := range []string{"etc/os-release", "usr/lib/os-release"} {
		path := filepath.Join(hostRoot, name)
		b, err := readSmall(path)
		if errors.Is(err, fs.ErrNotExist) {
			missing = append(missing, path)
			continue
		}
		if err != nil {
			warn.add("os-release: %v", err)
			return nil
		}
		kv, err := parseOSRelease(bytes.NewReader(b))
		if err != nil {
			warn.add("%s: %v", path, err)
		}
		return kv
	}
	warn.add("os-release: none of %s exists", strings.Join(missing, ", "))
	return nil
}

// parseUptime returns the first field of /proc/uptime: seconds since boot,
// including time suspended.
func parseUptime(r io.Reader) (float64, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxSmallFile))
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, errors.New("empty uptime")
	}
	up, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return 0, fmt.Errorf("parse uptime %q: %w", fields[0], err)
	}
	return up, nil
}

// parseOSRelease parses os-release(5): KEY=VALUE lines in a subset of shell
// syntax, where a value may mix unquoted, "double-quoted" and 'single-quoted'
// parts with backslash escapes. The file comes from the host under
// investigation and so may have been written by the attacker: a malformed
// line is skipped rather than fatal, every well-formed line is still
// returned, and err then names the skipped lines.
func parseOSRelease(r io.Reader) (map[string]string, error) {
	kv := map[string]string{}
	var bad []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, raw, ok := strings.Cut(line, "=")
		if !ok || !validEnvKey(key) {
			bad = append(bad, strconv.Itoa(n))
			continue
		}
		val, err := unquoteShell(raw)
		if err != nil {
			bad = append(bad, strconv.Itoa(n))
			continue
		}
		kv[key] = val
	}
	if err := sc.Err(); err != nil {
		return kv, err
	}
	if len(bad) > 0 {
		return kv, fmt.Errorf("skipped malformed lines %s", strings.Join(bad, ", "))
	}
	return kv, nil
}

func validEnvKey(k string) bool {
	if k == "" || (k[0] >= '0' && k[0] <= '9') {
		return false
	}
	for _, c := range []byte(k) {
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// unquoteShell decodes one os-release value. It follows the shell where the
// spec does, and is lenient where a real shell would run a command instead:
// an unquoted space is kept as part of the value, as systemd does.
func unquoteShell(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", errors.New("unterminated single quote")
			}
			b.WriteString(s[i+1 : i+1+end])
			i += 1 + end
		case '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				// In double quotes a backslash escapes only these; before
				// anything else it is itself.
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return "", errors.New("unterminated double quote")
			}
		case '\\':
			if i+1 < len(s) {
				i++
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
