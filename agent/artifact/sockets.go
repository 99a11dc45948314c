package artifact

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

func init() {
	register(Kind{
		Name:    "sockets",
		Ext:     "jsonl",
		Doc:     "one JSON line per socket and owner (osquery process_open_sockets + listening_ports), from every network namespace",
		Collect: collectSockets,
	})
}

// socketRecord is one line of the sockets artifact: one socket as one
// owning descriptor sees it, so a socket shared by a forked server's workers
// appears once per (pid, fd), as in osquery's process_open_sockets. A socket
// no descriptor holds (TIME_WAIT, a kernel socket, an owner whose fds could
// not be read) appears once with pid and fd null.
//
// listening is what ss -l shows: TCP in LISTEN; UDP, UDP-Lite and raw
// sockets that are bound and unconnected; unix sockets accepting
// connections; and every packet socket, because a packet socket receives
// every frame of its protocol (the way BPFDoor-style backdoors listen).
type socketRecord struct {
	PID           *int    `json:"pid"`
	FD            *int    `json:"fd"`
	Name          string  `json:"name"` // owner's comm
	Socket        uint64  `json:"socket"`
	Table         string  `json:"table"` // the /proc/net table: tcp, udp6, unix, packet...
	Family        int     `json:"family"`
	Protocol      int     `json:"protocol"`
	Type          string  `json:"type,omitempty"` // unix and packet: stream, dgram, seqpacket, raw
	LocalAddress  string  `json:"local_address"`
	LocalPort     int     `json:"local_port"`
	RemoteAddress string  `json:"remote_address"`
	RemotePort    int     `json:"remote_port"`
	Path          string  `json:"path"`
	State         string  `json:"state"`
	Listening     bool    `json:"listening"`
	Interface     *int    `json:"interface,omitempty"` // packet: ifindex, 0 for all
	UID           *uint32 `json:"uid"`
	NetNamespace  uint64  `json:"net_namespace"`
	ContainerID   string  `json:"container_id"`
}

// Address families and protocols, as osquery reports them (numbers).
const (
	afUnix    = 1
	afInet    = 2
	afInet6   = 10
	afPacket  = 17
	ipTCP     = 6
	ipUDP     = 17
	ipUDPLite = 136
	ipICMP    = 1
	ipICMPv6  = 58
)

type netTable struct {
	name     string
	family   int
	protocol int // 0: from the line (raw sockets put it in the port field)
}

// netTables are read in this order for every namespace. A table that does
// not exist (IPv6 disabled, no udplite) is skipped.
var netTables = []netTable{
	{"tcp", afInet, ipTCP}, {"tcp6", afInet6, ipTCP},
	{"udp", afInet, ipUDP}, {"udp6", afInet6, ipUDP},
	{"udplite", afInet, ipUDPLite}, {"udplite6", afInet6, ipUDPLite},
	{"raw", afInet, 0}, {"raw6", afInet6, 0},
	{"icmp", afInet, ipICMP}, {"icmp6", afInet6, ipICMPv6},
	{"unix", afUnix, 0},
	{"packet", afPacket, 0},
}

type sockOwner struct {
	pid, fd int
}

// sockProc is what the owner scan learns about one process.
type sockProc struct {
	pid       int
	gone      bool
	netns     uint64
	name      string
	container string
	sockets   []sockFD
	err       string
}

type sockFD struct {
	fd    int
	inode uint64
}

func collectSockets(ctx context.Context, env Env, _ Params, w io.Writer) (Result, error) {
	res, stats, warn, err := beginSnapshot(ctx, env)
	if err != nil {
		return res, err
	}

	// Pass 1: who holds which socket, and which network namespace each
	// process is in — unless open_files already found out in this
	// collection.
	ix := env.Shared.socketOwners()
	if ix != nil {
		stats.extra["owners_from"] = "open_files scan started " + ix.scanned.UTC().Format(time.RFC3339Nano)
	} else {
		var pids []int
		if pids, err = snapshotPIDs(env.ProcRoot); err != nil {
			return res, fmt.Errorf("sockets: %w", err)
		}
		ix = newSocketIndex(stats.started)
		err = snapshotOrdered(ctx, snapshotWorkers(), len(pids), func(s *scratch, i int) sockProc {
			return scanSocketOwner(newSnapProc(env.ProcRoot, pids[i]), s)
		}, func(sp sockProc) error {
			ix.add(sp)
			return nil
		})
	}
	stats.processes, stats.vanished, stats.errors = ix.processes, ix.vanished, ix.errors
	for _, w := range ix.warnings {
		warn.add("%s", w)
	}
	owners, procs, members := ix.owners, ix.procs, ix.members
	if err != nil {
		res.Warnings = warn.result()
		res.Details = stats.details()
		return res, err
	}

	// Pass 2: every namespace's tables, read through the first member
	// that is still alive.
	// Records are appended to buf and written 64 KiB at a time.
	var buf []byte
	write := func(rec socketRecord) error {
		buf = append(rec.appendJSON(buf), '\n')
		res.Records++
		if len(buf) < 64<<10 {
			return nil
		}
		_, err := w.Write(buf)
		buf = buf[:0]
		return err
	}
	var unowned int
	emit := func(rec socketRecord) error {
		own := owners[rec.Socket]
		if len(own) == 0 {
			unowned++
			return write(rec)
		}
		for _, o := range own {
			rec.PID, rec.FD = &o.pid, &o.fd
			if sp := procs[o.pid]; sp != nil {
				rec.Name, rec.ContainerID = sp.name, sp.container
			}
			if err := write(rec); err != nil {
				return err
			}
		}
		return nil
	}
	nss := slices.Sorted(maps.Keys(members))
	for _, ns := range nss {
		if err := ctx.Err(); err != nil {
			// What was read is written: a cancelled capture keeps it.
			if len(buf) > 0 {
				w.Write(buf)
			}
			res.Warnings = warn.result()
			res.Details = stats.details()
			return res, err
		}
		read := false
		for _, pid := range members[ns] {
			p := newSnapProc(env.ProcRoot, pid)
			ok, err := readNetNamespace(p, ns, emit, &warn)
			if err != nil {
				res.Warnings = warn.result()
				res.Details = stats.details()
				return res, fmt.Errorf("write sockets artifact: %w", err)
			}
			if ok {
				read = true
				break
			}
		}
		if !read {
			stats.errors++
			warn.add("net namespace %d: every member exited before its tables were read", ns)
		}
	}
	if len(buf) > 0 {
		if _, err := w.Write(buf); err != nil {
			res.Warnings = warn.result()
			res.Details = stats.details()
			return res, fmt.Errorf("write sockets artifact: %w", err)
		}
	}
	res.Warnings = warn.result()
	stats.extra["net_namespaces"] = strconv.Itoa(len(nss))
	stats.extra["sockets_unowned"] = strconv.Itoa(unowned)
	res.Details = stats.details()
	return res, nil
}

// scanSocketOwner reads one process's network namespace and the socket
// inodes behind its descriptors.
func scanSocketOwner(p snapProc, s *scratch) sockProc {
	sp := sockProc{pid: p.pid}
	gone := sockProc{pid: p.pid, gone: true}
	h, err := openProc(p)
	if err != nil {
		if p.gone(err) {
			return gone
		}
		sp.err = "open: " + err.Error()
		return sp
	}
	defer h.close()
	var errs errorList
	if sp.netns, err = h.namespace(s, "net"); err != nil {
		if p.gone(err) {
			return gone
		}
		errs.add("net_namespace", err)
	}
	fdDir, err := h.openSubdir("fd")
	var fds []int
	if err == nil {
		fds, err = s.listNumeric(fdDir, h.dir+"/fd")
		defer unix.Close(fdDir)
	}
	if err != nil {
		if p.gone(err) {
			return gone
		}
		errs.add("fd", err)
	}
	for _, fd := range fds {
		name := strconv.Itoa(fd)
		target, err := s.readlink(fdDir, name, h.dir+"/fd/"+name)
		if err != nil || !strings.HasPrefix(target, "socket:[") {
			continue // closed since the listing, or not a socket
		}
		if ino, ok := bracketInode(target); ok {
			sp.sockets = append(sp.sockets, sockFD{fd, ino})
		}
	}
	if len(sp.sockets) > 0 {
		sp.name, sp.container = socketOwnerNames(h, s)
	}
	sp.err = errs.String()
	return sp
}

// socketOwnerNames reads what a socket record says of its owner: the
// process's command name and container.
func socketOwnerNames(h procHandle, s *scratch) (name, container string) {
	if b, _, err := h.read(s, "comm", 256); err == nil {
		name = strings.TrimSuffix(string(b), "\n")
	}
	return name, socketOwnerContainer(h, s)
}

// socketOwnerContainer reads the container of a socket's owner.
func socketOwnerContainer(h procHandle, s *scratch) string {
	if b, _, err := h.read(s, "cgroup", maxSmallFile); err == nil {
		return parseCgroup(b).Container.ID
	}
	return ""
}

// readNetNamespace emits every socket of namespace ns, read through member
// process p. ok is false when p exited before its tables could be read, so
// that the caller tries another member.
func readNetNamespace(p snapProc, ns uint64, emit func(socketRecord) error, warn *warnings) (ok bool, err error) {
	// Re-check membership: the pid may have been reused, or the process
	// may have moved to another namespace with setns since pass 1.
	if now, err := p.namespace("net"); err != nil || now != ns {
		return false, nil
	}
	for _, t := range netTables {
		f, err := os.Open(p.path("net", t.name))
		if err != nil {
			if p.gone(err) {
				return false, nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				warn.add("net namespace %d: %s: %v", ns, t.name, err)
			}
			continue
		}
		err = readNetTable(f, t, ns, emit, func(line string) {
			warn.add("net namespace %d: %s: skipped malformed line %q", ns, t.name, line)
		})
		f.Close()
		if err != nil {
			return true, err
		}
	}
	return true, nil
}

// errEmit marks an error from emit (the writer), as opposed to reading.
type errEmit struct{ err error }

func (e errEmit) Error() string { return e.err.Error() }
func (e errEmit) Unwrap() error { return e.err }

// readNetTable parses one table and emits its sockets. Read errors end the
// table (recorded by the caller as a warning would be); only write errors
// are returned, because they end the artifact.
func readNetTable(r io.Reader, t netTable, ns uint64, emit func(socketRecord) error, bad func(string)) error {
	base := socketRecord{Table: t.name, Family: t.family, Protocol: t.protocol, NetNamespace: ns}
	var err error
	switch t.name {
	case "unix":
		err = parseNetUnix(r, func(l netUnixLine) error {
			rec := base
			rec.Socket, rec.Path = l.Inode, l.Path
			rec.Type = unixTypes[l.Type]
			if rec.Type == "" {
				rec.Type = "type_" + strconv.Itoa(int(l.Type))
			}
			rec.State = unixStates[l.State]
			rec.Listening = l.Flags&unixAcceptCon != 0
			if rec.Listening {
				rec.State = "LISTEN"
			}
			if e := emit(rec); e != nil {
				return errEmit{e}
			}
			return nil
		}, bad)
	case "packet":
		err = eachNetLine(r, func(line string) error {
			l, perr := parseNetPacketLine(line)
			if perr != nil {
				bad(line)
				return nil
			}
			rec := base
			rec.Socket, rec.Protocol, rec.Interface = l.Inode, int(l.Proto), &l.Interface
			rec.UID = &l.UID
			rec.Type = map[uint16]string{2: "dgram", 3: "raw"}[l.Type]
			rec.Listening = true
			if e := emit(rec); e != nil {
				return errEmit{e}
			}
			return nil
		})
	default:
		err = eachNetLine(r, func(line string) error {
			l, perr := parseNetIPLine(line)
			if perr != nil {
				bad(line)
				return nil
			}
			rec := base
			rec.Socket = l.Inode
			rec.LocalAddress, rec.RemoteAddress = l.Local.Addr().String(), l.Remote.Addr().String()
			rec.LocalPort, rec.RemotePort = int(l.Local.Port()), int(l.Remote.Port())
			rec.State = tcpStateName(l.State)
			rec.UID = &l.UID
			switch {
			case t.protocol == ipTCP:
				rec.Listening = l.State == 10
			case strings.HasPrefix(t.name, "raw"):
				// The kernel prints a raw socket's protocol as its port.
				rec.Protocol, rec.LocalPort, rec.RemotePort = rec.LocalPort, 0, 0
				rec.Listening = l.State == 7
			default:
				rec.Listening = l.State == 7 && rec.LocalPort != 0
			}
			if e := emit(rec); e != nil {
				return errEmit{e}
			}
			return nil
		})
	}
	var ee errEmit
	if errors.As(err, &ee) {
		return ee.err
	}
	if err != nil {
		bad("read error: " + err.Error())
	}
	return nil
}

// eachNetLine calls fn for every line after the header.
func eachNetLine(r io.Reader, fn func(string) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	if _, err := readNetLine(br); err != nil {
		if err == io.EOF {
			return nil
		}
		return err
	}
	for {
		line, err := readNetLine(br)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace([]byte(line))) == 0 {
			continue
		}
		if err := fn(line); err != nil {
			return err
		}
	}
}
