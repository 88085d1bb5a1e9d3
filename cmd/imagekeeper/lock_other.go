//go:build !unix

package main

import (
	"errors"
	"os"
)

var errWouldBlock = errors.New("lock held")

// flockExclusive is not implemented off Unix; the daemon targets Linux.
func flockExclusive(*os.File) error { return errors.New("file locks need a Unix system") }
