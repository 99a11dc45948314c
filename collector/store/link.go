package store

import "os"

// linkNoReplace publishes oldpath at newpath with link(2), which fails
// rather than replace an existing newpath, then drops the old name.
func linkNoReplace(oldpath, newpath string) error {
	if err := os.Link(oldpath, newpath); err != nil {
		return err
	}
	// The object is committed once the link exists. A leftover partial name
	// is only a second hard link to the same bytes, which List ignores, so
	// failing to remove it must not fail the commit.
	_ = os.Remove(oldpath)
	return nil
}
