package artifact

// Parsers for the socket tables in /proc/PID/net. procfs parses tcp, udp and
// unix, but aborts a whole table on one line it does not like, collapses
// the spaces of a unix socket path and knows nothing of raw, udplite or
// packet sockets; these parse line by line, so one odd line costs one
// socket, and keep paths as the kernel printed them.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// maxNetLine bounds one line of a socket table. The longest the kernel
// writes is a unix line with a 108-byte path; anything far past that is
// not a line we should hold.
const maxNetLine = 64 << 10

// netIPLine is one socket of /proc/net/{tcp,udp,raw,udplite,icmp}{,6}.
type netIPLine struct {
	Local, Remote netip.AddrPort
	State         uint8
	TxQueue       uint64
	RxQueue       uint64
	UID           uint32
	Inode         uint64
}

var errNetLine = errors.New("malformed socket table line")

// parseNetIPLine parses one data line, e.g.
//
//	0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 123456 1 ...
//
// Addresses are the kernel's __be32 words printed as host-order integers,
// so decoding them through the native byte order gives network order back
// on little- and big-endian machines alike.
func parseNetIPLine(line string) (netIPLine, error) {
	var l netIPLine
	f := strings.Fields(line)
	if len(f) < 10 || !strings.HasSuffix(f[0], ":") {
		return l, fmt.Errorf("%w: %q", errNetLine, line)
	}
	var err error
	if l.Local, err = parseHexAddrPort(f[1]); err != nil {
		return l, err
	}
	if l.Remote, err = parseHexAddrPort(f[2]); err != nil {
		return l, err
	}
	st, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return l, fmt.Errorf("%w: state %q", errNetLine, f[3])
	}
	l.State = uint8(st)
	tx, rx, ok := strings.Cut(f[4], ":")
	if !ok {
		return l, fmt.Errorf("%w: queues %q", errNetLine, f[4])
	}
	if l.TxQueue, err = strconv.ParseUint(tx, 16, 64); err != nil {
		return l, fmt.Errorf("%w: tx_queue %q", errNetLine, tx)
	}
	if l.RxQueue, err = strconv.ParseUint(rx, 16, 64); err != nil {
		return l, fmt.Errorf("%w: rx_queue %q", errNetLine, rx)
	}
	uid, err := strconv.ParseUint(f[7], 10, 32)
	if err != nil {
		return l, fmt.Errorf("%w: uid %q", errNetLine, f[7])
	}
	l.UID = uint32(uid)
	if l.Inode, err = strconv.ParseUint(f[9], 10, 64); err != nil {
		return l, fmt.Errorf("%w: inode %q", errNetLine, f[9])
	}
	return l, nil
}

func parseHexAddrPort(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: address %q", errNetLine, s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: port %q", errNetLine, p)
	}
	var ip [16]byte
	switch len(h) {
	case 8, 32:
	default:
		return netip.AddrPort{}, fmt.Errorf("%w: address %q", errNetLine, h)
	}
	for i := 0; i < len(h); i += 8 {
		w, err := strconv.ParseUint(h[i:i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%w: address %q", errNetLine, h)
		}
		binary.NativeEndian.PutUint32(ip[i/2:], uint32(w))
	}
	var addr netip.Addr
	if len(h) == 8 {
		addr = netip.AddrFrom4([4]byte(ip[:4]))
	} else {
		addr = netip.AddrFrom16(ip)
	}
	return netip.AddrPortFrom(addr, uint16(port)), nil
}

// tcpStates are the kernel's TCP states (include/net/tcp_states.h) by
// number, named as ss names them. UDP and raw sockets reuse the numbers:
// ESTABLISHED for a connected socket, CLOSE for an unconnected one.
var tcpStates = [...]string{
	1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
	11: "CLOSING", 12: "NEW_SYN_RECV",
}

func tcpStateName(st uint8) string {
	if int(st) < len(tcpStates) && tcpStates[st] != "" {
		return tcpStates[st]
	}
	return "UNKNOWN_" + strconv.Itoa(int(st))
}

// netUnixLine is one socket of /proc/net/unix.
type netUnixLine struct {
	Flags uint64
	Type  uint16
	State uint8
	Inode uint64
	Path  string // "" unbound, "@name" abstract
}

// unixAcceptCon is __SO_ACCEPTCON: the socket is listening.
const unixAcceptCon = 1 << 16

// parseNetUnix parses /proc/net/unix, calling emit per socket. The kernel
// writes a socket's path byte for byte, newlines included, so a line that
// is not a socket line continues the path of the one before. (A path can
// therefore also forge what looks like a socket line; only the netlink
// sock_diag interface is free of that, and it needs setns into every
// namespace.) A line that is neither is reported through bad and skipped.
func parseNetUnix(r io.Reader, emit func(netUnixLine) error, bad func(line string)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var pending *netUnixLine
	first := true
	for {
		line, err := readNetLine(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if first {
			first = false
			if strings.HasPrefix(line, "Num") {
				continue
			}
		}
		l, perr := parseNetUnixLine(line)
		if perr != nil {
			if pending != nil && pending.Path != "" {
				pending.Path += "\n" + line
			} else {
				bad(line)
			}
			continue
		}
		if pending != nil {
			if err := emit(*pending); err != nil {
				return err
			}
		}
		pending = &l
	}
	if pending != nil {
		return emit(*pending)
	}
	return nil
}

// parseNetUnixLine parses "%pK: %08X %08X %08X %04X %02X %5lu[ path]".
func parseNetUnixLine(line string) (netUnixLine, error) {
	var l netUnixLine
	rest := line
	var f [7]string
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
	}
	if !strings.HasSuffix(f[0], ":") || len(f[0]) < 2 || !isHexDigits(strings.TrimSuffix(f[0], ":")) {
		return l, fmt.Errorf("%w: %q", errNetLine, line)
	}
	flags, err1 := strconv.ParseUint(f[3], 16, 64)
	typ, err2 := strconv.ParseUint(f[4], 16, 16)
	st, err3 := strconv.ParseUint(f[5], 16, 8)
	ino, err4 := strconv.ParseUint(f[6], 10, 64)
	_, err5 := strconv.ParseUint(f[1], 16, 64)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return l, fmt.Errorf("%w: %q", errNetLine, line)
	}
	l.Flags, l.Type, l.State, l.Inode = flags, uint16(typ), uint8(st), ino
	if rest != "" {
		if rest[0] != ' ' {
			return l, fmt.Errorf("%w: %q", errNetLine, line)
		}
		l.Path = rest[1:]
	}
	return l, nil
}

var unixTypes = map[uint16]string{1: "stream", 2: "dgram", 5: "seqpacket"}

// unixStates are socket_state (include/uapi/linux/net.h).
var unixStates = map[uint8]string{0: "FREE", 1: "UNCONNECTED", 2: "CONNECTING", 3: "CONNECTED", 4: "DISCONNECTING"}

// netPacketLine is one socket of /proc/net/packet.
type netPacketLine struct {
	Type      uint16 // SOCK_RAW (3) or SOCK_DGRAM (2)
	Proto     uint16 // ethertype, host order (0x0003 is ETH_P_ALL)
	Interface int    // ifindex, 0 for all interfaces
	UID       uint32
	Inode     uint64
}

// parseNetPacketLine parses "sk RefCnt Type Proto Iface R Rmem User Inode".
func parseNetPacketLine(line string) (netPacketLine, error) {
	var l netPacketLine
	f := strings.Fields(line)
	if len(f) < 9 {
		return l, fmt.Errorf("%w: %q", errNetLine, line)
	}
	typ, err1 := strconv.ParseUint(f[2], 10, 16)
	proto, err2 := strconv.ParseUint(f[3], 16, 16)
	iface, err3 := strconv.ParseInt(f[4], 10, 32)
	uid, err4 := strconv.ParseUint(f[7], 10, 32)
	ino, err5 := strconv.ParseUint(f[8], 10, 64)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return l, fmt.Errorf("%w: %q", errNetLine, line)
	}
	l.Type, l.Proto, l.Interface, l.UID, l.Inode = uint16(typ), uint16(proto), int(iface), uint32(uid), ino
	return l, nil
}

// readNetLine reads one line without its newline, at most maxNetLine bytes of
// it (the rest is discarded).
func readNetLine(br *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if len(b)+len(chunk) <= maxNetLine {
			b = append(b, chunk...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil && (err != io.EOF || len(b) == 0) {
			return "", err
		}
		return strings.TrimSuffix(string(b), "\n"), nil
	}
}

func isHexDigits(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return s != ""
}
