package main

import (
	"crypto/sha256"
	"os"
	"time"
)

// fileWatch notices a change of the policy file's content by polling, so it needs no
// inotify dependency and sees edits through symlinks (a config-map style swap) too.
// A changed mtime or size makes it read and hash the file at once; every hashEvery
// polls it hashes anyway, because a same-size edit within the file system's mtime
// granularity changes neither. The hash decides: a touch is not a reload.
type fileWatch struct {
	path  string
	polls int
	mtime time.Time
	size  int64
	// seen is the content the last read found; applied the content last reported
	// as a change. They differ while an edit settles.
	seen, applied [sha256.Size]byte
}

// hashEvery is how many polls may trust an unchanged stat.
const hashEvery = 10

func newFileWatch(path string) *fileWatch {
	w := &fileWatch{path: path}
	if fi, err := os.Stat(path); err == nil {
		if data, err := os.ReadFile(path); err == nil {
			w.mtime, w.size = fi.ModTime(), fi.Size()
			w.seen = sha256.Sum256(data)
			w.applied = w.seen
		}
	}
	return w
}

// changed reports whether the content differs from what it last reported. New
// content counts only once a later poll finds it unchanged: editors and
// os.WriteFile truncate before they write, and a poll between the two must not
// reload a half-written file (which would fail, or worse, succeed with less).
func (w *fileWatch) changed() bool {
	fi, err := os.Stat(w.path)
	if err != nil {
		// A file mid-replace may be missing for an instant; the next poll sees it.
		return false
	}
	w.polls++
	if !fi.ModTime().Equal(w.mtime) || fi.Size() != w.size || w.polls%hashEvery == 0 {
		data, err := os.ReadFile(w.path)
		if err != nil {
			return false
		}
		w.mtime, w.size = fi.ModTime(), fi.Size()
		if sum := sha256.Sum256(data); sum != w.seen {
			w.seen = sum
			return false
		}
	}
	if w.seen == w.applied {
		return false
	}
	w.applied = w.seen
	return true
}
