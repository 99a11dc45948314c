package artifact

import (
	"bytes"
	"strings"
)

// redacted stands in for a secret's value. The key stays: that a process
// had AWS_SECRET_ACCESS_KEY set is itself evidence.
const redacted = "<redacted>"

// secretKeyParts mark an environment variable whose value is likely a
// credential. The match is on the upper-cased key and deliberately broad:
// redacting a harmless value costs a responder one re-collection with
// env_unredacted, leaking a credential into an evidence store costs more.
var secretKeyParts = []string{
	"PASS", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "AUTH", "PRIVATE",
	"SESSION", "COOKIE", "SIGNATURE", "SALT", "DSN", "CONNECTION_STRING", "CONN_STR",
}

func secretKey(key string) bool {
	k := strings.ToUpper(key)
	for _, part := range secretKeyParts {
		if strings.Contains(k, part) {
			return true
		}
	}
	return false
}

// parseEnviron splits /proc/PID/environ (NUL-separated KEY=VALUE entries,
// in the order the process has them, duplicates included) and redacts the
// values of secret-looking keys and the password of any URL with userinfo
// ("postgres://app:hunter2@db/x"), unless unredacted. An entry without "="
// is kept verbatim: it is unusual, and so interesting.
func parseEnviron(b []byte, unredacted bool) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return []string{}
	}
	parts := bytes.Split(b, []byte{0})
	env := make([]string, 0, len(parts))
	for _, p := range parts {
		kv := string(p)
		if !unredacted {
			kv = redactEnv(kv)
		}
		env = append(env, kv)
	}
	return env
}

func redactEnv(kv string) string {
	key, val, ok := strings.Cut(kv, "=")
	if !ok {
		return kv
	}
	if secretKey(key) && val != "" {
		return key + "=" + redacted
	}
	return key + "=" + redactURLPassword(val)
}

// redactURLPassword replaces the password in "scheme://user:password@host"
// wherever it appears in s, keeping user and host, which identify where a
// credential leads without being the credential.
func redactURLPassword(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, "://")
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i+3])
		s = s[i+3:]
		// The authority ends at the first '/', '?', '#' or whitespace; the
		// userinfo at its last '@'.
		end := strings.IndexAny(s, "/?# \t")
		if end < 0 {
			end = len(s)
		}
		auth := s[:end]
		at := strings.LastIndexByte(auth, '@')
		colon := strings.IndexByte(auth, ':')
		if at > 0 && colon >= 0 && colon < at {
			b.WriteString(auth[:colon+1])
			b.WriteString(redacted)
			b.WriteString(auth[at:])
		} else {
			b.WriteString(auth)
		}
		s = s[end:]
	}
}
