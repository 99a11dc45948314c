package vm

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
)

// Initramfs is the content of a guest's root file system: path → file.
type Initramfs map[string]File

// File is one entry of an Initramfs: Data, the content of Source (a host
// path), or a symlink to Link.
type File struct {
	Mode   fs.FileMode
	Data   []byte
	Source string
	Link   string
}

// Write writes the archive as a gzip'd cpio "newc" archive, the format the
// kernel unpacks into its initial root. Parent directories are added as
// needed.
func (fsys Initramfs) Write(w io.Writer) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(zw, 1<<20)
	dirs := map[string]bool{}
	files := map[string]File{} // cpio names have no leading slash
	var names []string
	for name, f := range fsys {
		name = strings.TrimPrefix(path.Clean("/"+name), "/")
		files[name] = f
		names = append(names, name)
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var ds []string
	for d := range dirs {
		ds = append(ds, d)
	}
	slices.Sort(ds) // parents sort before their children
	slices.Sort(names)
	ino := uint32(1)
	for _, d := range ds {
		if _, isFile := files[d]; isFile {
			continue
		}
		if err := cpioEntry(bw, ino, d, 0o040755, nil); err != nil {
			return err
		}
		ino++
	}
	for _, name := range names {
		f := files[name]
		var data []byte
		mode := uint32(0o100000) | uint32(f.Mode.Perm())
		switch {
		case f.Link != "":
			mode, data = 0o120777, []byte(f.Link)
		case f.Source != "":
			b, err := os.ReadFile(f.Source)
			if err != nil {
				return err
			}
			data = b
		default:
			data = f.Data
		}
		if err := cpioEntry(bw, ino, name, mode, data); err != nil {
			return err
		}
		ino++
	}
	if err := cpioEntry(bw, 0, "TRAILER!!!", 0, nil); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return zw.Close()
}

func cpioEntry(w io.Writer, ino uint32, name string, mode uint32, data []byte) error {
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	var b []byte
	b = append(b, hdr...)
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, make([]byte, pad4(len(b)))...)
	if _, err := w.Write(b); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	_, err := w.Write(make([]byte, pad4(len(data))))
	return err
}

func pad4(n int) int { return (4 - n%4) % 4 }
