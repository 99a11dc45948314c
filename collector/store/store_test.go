package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/custodyhq/custody/collector/store"
)

func TestKey(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		caseID, agent, col, file string
		want                     string
		wantErr                  string // substring naming the bad part; "" for success
	}{
		{name: "ok", caseID: "IR-2024-001", agent: "i-0abc123", col: "01J9ZK", file: "memory.lime.zst",
			want: "IR-2024-001/i-0abc123/01J9ZK/memory.lime.zst"},
		{name: "underscore-dash", caseID: "c_1", agent: "a-1", col: "c.1", file: "f_-.x", want: "c_1/a-1/c.1/f_-.x"},
		{name: "max-length", caseID: "c", agent: "a", col: "x", file: strings.Repeat("f", 128),
			want: "c/a/x/" + strings.Repeat("f", 128)},
		{name: "too-long", caseID: "c", agent: "a", col: "x", file: strings.Repeat("f", 129), wantErr: "file"},
		{name: "empty-case", caseID: "", agent: "a", col: "x", file: "f", wantErr: "case id"},
		{name: "slash-in-agent", caseID: "c", agent: "a/b", col: "x", file: "f", wantErr: "agent id"},
		{name: "dotdot-collection", caseID: "c", agent: "a", col: "..", file: "f", wantErr: "collection id"},
		{name: "hidden-file", caseID: "c", agent: "a", col: "x", file: ".f", wantErr: "file"},
		{name: "dotdot-inside", caseID: "c", agent: "a", col: "x", file: "f..g", wantErr: `".."`},
		{name: "leading-dash", caseID: "-c", agent: "a", col: "x", file: "f", wantErr: "case id"},
		{name: "space", caseID: "c", agent: "a", col: "x", file: "f g", wantErr: "file"},
		{name: "non-ascii", caseID: "c", agent: "a", col: "x", file: "fé", wantErr: "file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := store.Key(tc.caseID, tc.agent, tc.col, tc.file)
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Key = %q, %v; want %q, nil", got, err, tc.want)
				}
				if err := store.ValidateKey(got); err != nil {
					t.Errorf("ValidateKey(Key(...)) = %v", err)
				}
				return
			}
			if !errors.Is(err, store.ErrBadKey) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Key = %q, %v; want ErrBadKey naming %s", got, err, tc.wantErr)
			}
		})
	}
}

func TestValidateKeyAndPrefix(t *testing.T) {
	for _, tc := range []struct {
		in              string
		keyOK, prefixOK bool
	}{
		{"", false, true},
		{"c", false, true},
		{"c/a", false, true},
		{"c/a/x", false, true},
		{"c/a/x/f", true, false},
		{"c/a/x/f/g", false, false},
		{"/c/a/x/f", false, false},
		{"c/a/x/f/", false, false},
		{"c/", false, false},
		{"c//x/f", false, false},
		{"../a/x/f", false, false},
		{"c/a/x/..", false, false},
		{"c/a/x/.", false, false},
		{"c/a/x/.f.partial-123", false, false},
	} {
		if err := store.ValidateKey(tc.in); (err == nil) != tc.keyOK || err != nil && !errors.Is(err, store.ErrBadKey) {
			t.Errorf("ValidateKey(%q) = %v, want ok=%v", tc.in, err, tc.keyOK)
		} else if err != nil && !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ValidateKey(%q) = %v, want the key named in the error", tc.in, err)
		}
		if err := store.ValidatePrefix(tc.in); (err == nil) != tc.prefixOK || err != nil && !errors.Is(err, store.ErrBadKey) {
			t.Errorf("ValidatePrefix(%q) = %v, want ok=%v", tc.in, err, tc.prefixOK)
		}
	}
}
