package artifact

// JSON for the records a snapshot writes thousands of (open_files,
// memory_maps, sockets), appended by hand: encoding/json's reflection
// was a fifth of those scans' CPU. The output is byte for byte what
// encoding/json writes with SetEscapeHTML(false), which
// TestRecordJSONMatchesEncodingJSON and FuzzRecordJSON hold it to; any
// other record goes through encoding/json.

import (
	"strconv"
	"unicode/utf8"
)

// jsonAppender is a record that appends its own JSON (no newline).
type jsonAppender interface {
	appendJSON(b []byte) []byte
}

func (r openFileRecord) appendJSON(b []byte) []byte {
	b = append(b, `{"pid":`...)
	b = strconv.AppendInt(b, int64(r.PID), 10)
	b = append(b, `,"fd":`...)
	b = appendJSONIntRef(b, r.FD)
	b = appendJSONField(b, "path", r.Path)
	b = appendJSONField(b, "type", r.Type)
	b = append(b, `,"deleted":`...)
	b = strconv.AppendBool(b, r.Deleted)
	b = appendJSONField(b, "flags", r.Flags)
	b = appendJSONField(b, "access", r.Access)
	b = append(b, `,"flag_names":`...)
	if r.FlagNames == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i, n := range r.FlagNames {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, n)
		}
		b = append(b, ']')
	}
	b = append(b, `,"pos":`...)
	b = appendJSONIntPtr(b, r.Pos)
	b = append(b, `,"inode":`...)
	b = appendJSONUintPtr(b, r.Inode)
	b = appendJSONField(b, "device", r.Device)
	b = append(b, `,"mnt_id":`...)
	b = appendJSONIntPtr(b, r.MntID)
	b = append(b, `,"size":`...)
	b = appendJSONIntPtr(b, r.Size)
	if r.Error != "" {
		b = appendJSONField(b, "error", r.Error)
	}
	return append(b, '}')
}

func (r memoryMapRecord) appendJSON(b []byte) []byte {
	b = append(b, `{"pid":`...)
	b = strconv.AppendInt(b, int64(r.PID), 10)
	b = appendJSONField(b, "start", r.Start)
	b = appendJSONField(b, "end", r.End)
	b = append(b, `,"size":`...)
	b = appendJSONUintPtr(b, r.Size)
	b = appendJSONField(b, "permissions", r.Permissions)
	b = append(b, `,"offset":`...)
	b = appendJSONUintPtr(b, r.Offset)
	b = appendJSONField(b, "device", r.Device)
	b = append(b, `,"inode":`...)
	b = appendJSONUintPtr(b, r.Inode)
	b = appendJSONField(b, "path", r.Path)
	b = append(b, `,"pseudo":`...)
	b = strconv.AppendBool(b, r.Pseudo)
	b = append(b, `,"deleted":`...)
	b = strconv.AppendBool(b, r.Deleted)
	if r.Error != "" {
		b = appendJSONField(b, "error", r.Error)
	}
	return append(b, '}')
}

func (r socketRecord) appendJSON(b []byte) []byte {
	b = append(b, `{"pid":`...)
	b = appendJSONIntRef(b, r.PID)
	b = append(b, `,"fd":`...)
	b = appendJSONIntRef(b, r.FD)
	b = appendJSONField(b, "name", r.Name)
	b = append(b, `,"socket":`...)
	b = strconv.AppendUint(b, r.Socket, 10)
	b = appendJSONField(b, "table", r.Table)
	b = append(b, `,"family":`...)
	b = strconv.AppendInt(b, int64(r.Family), 10)
	b = append(b, `,"protocol":`...)
	b = strconv.AppendInt(b, int64(r.Protocol), 10)
	if r.Type != "" {
		b = appendJSONField(b, "type", r.Type)
	}
	b = appendJSONField(b, "local_address", r.LocalAddress)
	b = append(b, `,"local_port":`...)
	b = strconv.AppendInt(b, int64(r.LocalPort), 10)
	b = appendJSONField(b, "remote_address", r.RemoteAddress)
	b = append(b, `,"remote_port":`...)
	b = strconv.AppendInt(b, int64(r.RemotePort), 10)
	b = appendJSONField(b, "path", r.Path)
	b = appendJSONField(b, "state", r.State)
	b = append(b, `,"listening":`...)
	b = strconv.AppendBool(b, r.Listening)
	if r.Interface != nil {
		b = append(b, `,"interface":`...)
		b = strconv.AppendInt(b, int64(*r.Interface), 10)
	}
	b = append(b, `,"uid":`...)
	if r.UID == nil {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendUint(b, uint64(*r.UID), 10)
	}
	b = append(b, `,"net_namespace":`...)
	b = strconv.AppendUint(b, r.NetNamespace, 10)
	b = appendJSONField(b, "container_id", r.ContainerID)
	return append(b, '}')
}

// appendJSONField appends ,"key":"value"; key must need no escaping.
func appendJSONField(b []byte, key, value string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	return appendJSONString(b, value)
}

func appendJSONIntRef(b []byte, v *int) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	return strconv.AppendInt(b, int64(*v), 10)
}

func appendJSONIntPtr(b []byte, v *int64) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	return strconv.AppendInt(b, *v, 10)
}

func appendJSONUintPtr(b []byte, v *uint64) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	return strconv.AppendUint(b, *v, 10)
}

const jsonHex = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does without HTML escaping:
// '"' and '\\' escaped, control characters as \b \f \n \r \t or \u00XX,
// invalid UTF-8 as \ufffd, and U+2028 and U+2029 escaped.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', jsonHex[c>>4], jsonHex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', jsonHex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
