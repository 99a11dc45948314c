package store

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// renameNoReplace moves a finished partial file to its key, failing with an
// error matching fs.ErrExist if the key is taken: evidence is never
// overwritten, not even by a racing writer of the same key.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		// Old kernels and some filesystems (older NFS, FUSE) lack
		// RENAME_NOREPLACE; link(2) never replaces either.
		return linkNoReplace(oldpath, newpath)
	}
	return &os.LinkError{Op: "renameat2", Old: oldpath, New: newpath, Err: err}
}

// openNoFollow opens an object without following a symlink swapped in after
// the caller's Lstat.
func openNoFollow(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW, 0)
}

// openPartial reopens a partial file for a resumed write, refusing a
// symlink planted in its place.
func openPartial(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDWR|unix.O_NOFOLLOW, 0)
}
