package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFileWatch: a same-size edit within the mtime granularity is seen by the
// periodic hash, a touch is no change, and an edit counts once it settled.
func TestFileWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.yaml")
	if err := os.WriteFile(path, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newFileWatch(path)
	if w.changed() {
		t.Fatal("unchanged file reported changed")
	}
	// Same size, same mtime: only the periodic hash notices.
	fi, _ := os.Stat(path)
	if err := os.WriteFile(path, []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	seen := false
	for range hashEvery {
		if w.changed() {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("a same-size edit with the same mtime went unnoticed")
	}
	// A touch without an edit is not a change.
	later := fi.ModTime().Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if w.changed() {
		t.Fatal("a touch was reported as a change")
	}
	if err := os.WriteFile(path, []byte("longer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if w.changed() {
		t.Fatal("an edit was reported before it settled for one poll")
	}
	if !w.changed() {
		t.Fatal("an edit went unnoticed")
	}
	// A write caught half-way (truncated, then filled) is reported once, with the
	// final content, not once per intermediate state.
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if w.changed() {
		t.Fatal("a truncated file was reported before it settled")
	}
	if err := os.WriteFile(path, []byte("final content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if w.changed() {
		t.Fatal("content still being written was reported")
	}
	if !w.changed() || w.changed() {
		t.Fatal("the settled edit must be reported exactly once")
	}
}
