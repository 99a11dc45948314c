package artifact

import (
	"bufio"
	"bytes"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// maxIDFile bounds /etc/passwd and /etc/group. They come from the host (or
// container) under investigation, so their size is the attacker's choice;
// a bound that fits any real directory still keeps the agent small.
const maxIDFile = 4 << 20

// idNames maps uids and gids to names, from one passwd/group pair.
type idNames struct {
	users, groups map[uint64]string
}

func (n *idNames) user(id *uint64) string {
	if n == nil || id == nil {
		return ""
	}
	return n.users[*id]
}

func (n *idNames) group(id *uint64) string {
	if n == nil || id == nil {
		return ""
	}
	return n.groups[*id]
}

// parseIDFile parses passwd(5) or group(5): "name:password:id:...". As
// getpwuid does, the first entry for an id wins. Malformed lines are
// skipped: the file is evidence, not configuration, and one bad line must
// not cost every name.
func parseIDFile(b []byte) map[uint64]string {
	m := map[uint64]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxIDFile)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue // comments and NIS compat entries name no id
		}
		f := strings.SplitN(line, ":", 4)
		if len(f) < 3 || f[0] == "" {
			continue
		}
		id, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			continue
		}
		if _, dup := m[id]; !dup {
			m[id] = f[0]
		}
	}
	return m
}

func loadIDNames(etc string) *idNames {
	n := &idNames{}
	// A missing or unreadable file leaves names empty, which the record
	// shows as "", the same as an id with no entry: the numeric ids are
	// the evidence, names are a convenience.
	if b, _, err := readCapped(filepath.Join(etc, "passwd"), maxIDFile); err == nil {
		n.users = parseIDFile(b)
	}
	if b, _, err := readCapped(filepath.Join(etc, "group"), maxIDFile); err == nil {
		n.groups = parseIDFile(b)
	}
	return n
}

// nameResolver resolves ids in the right user database: a process in a
// container has the container's /etc/passwd, reachable through
// /proc/PID/root, and uid 1000 there is not the host's uid 1000. The
// databases are cached per mount namespace, so a host with a thousand
// processes in five containers reads five pairs of files.
type nameResolver struct {
	hostEtc  string
	selfMnt  uint64 // the agent's own mount namespace (0 if unknown)
	mu       sync.Mutex
	host     *idNames
	byMntNS  map[uint64]*idNames
	loadedNS int
}

// maxIDNamespaces bounds the cache; past it, names come from the host.
const maxIDNamespaces = 256

func newNameResolver(env Env, selfMnt uint64) *nameResolver {
	return &nameResolver{hostEtc: filepath.Join(env.HostRoot, "etc"), selfMnt: selfMnt, byMntNS: map[uint64]*idNames{}}
}

func (r *nameResolver) forProcess(p snapProc, mntNS uint64) *idNames {
	r.mu.Lock()
	defer r.mu.Unlock()
	if mntNS == 0 || mntNS == r.selfMnt || r.loadedNS >= maxIDNamespaces {
		if r.host == nil {
			r.host = loadIDNames(r.hostEtc)
		}
		return r.host
	}
	if n, ok := r.byMntNS[mntNS]; ok {
		return n
	}
	n := loadIDNames(p.path("root", "etc"))
	r.byMntNS[mntNS] = n
	r.loadedNS++
	return n
}
