//go:build !linux

package store

import "os"

func renameNoReplace(oldpath, newpath string) error {
	return linkNoReplace(oldpath, newpath)
}

func openNoFollow(name string) (*os.File, error) {
	return os.Open(name)
}

func openPartial(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDWR, 0)
}
