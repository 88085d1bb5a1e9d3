package cloud

import (
	"encoding/json"
	"fmt"
	"log/slog"
)

// Secret holds a password, token or application-credential secret. It prints as
// <secret> in every format (fmt verbs, slog, JSON) so that no log line or CLI output
// can leak it by accident; Reveal is the one deliberate way to read it.
//
// It is a struct around a pointer rather than a string type on purpose: fmt prints a
// string-kinded value as is for %p before it looks for Format, and encoding/json
// writes string-kinded map keys without asking MarshalText. A struct has no such
// back doors.
type Secret struct {
	value *string
}

// NewSecret wraps a secret value.
func NewSecret(value string) Secret { return Secret{value: &value} }

// IsZero reports whether the secret holds nothing.
func (s Secret) IsZero() bool { return s.value == nil || *s.value == "" }

const redacted = "<secret>"

// String implements fmt.Stringer.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer, so %#v hides it too.
func (s Secret) GoString() string { return `"` + redacted + `"` }

// Format implements fmt.Formatter, so every verb (%s %v %q %x %d ...) hides it.
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprint(f, `"`+redacted+`"`)
		return
	}
	fmt.Fprint(f, redacted)
}

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(redacted) }

// MarshalText implements encoding.TextMarshaler, so a Secret used as a map key or
// by a text encoder is hidden too.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Reveal returns the secret's value, for the one place that must send it.
func (s Secret) Reveal() string {
	if s.value == nil {
		return ""
	}
	return *s.value
}
