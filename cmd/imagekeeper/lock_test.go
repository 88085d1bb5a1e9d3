package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestLockRefusesSecondHolderNamingPID(t *testing.T) {
	db := filepath.Join(t.TempDir(), "lineage.db")
	l, err := acquireLock(db)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(db + ".lock")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(data)); got != strconv.Itoa(os.Getpid()) {
		t.Fatalf("lock file holds %q, want our pid", got)
	}
	_, err = acquireLock(db)
	if !errors.Is(err, errLocked) {
		t.Fatalf("second lock: %v, want errLocked", err)
	}
	if !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("error %q does not name the holder's pid", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	l2, err := acquireLock(db)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Release()
}
