package s3

import "testing"

// TestPartSizing checks that 10,000 parts always hold the object: parts
// are sent once they reach their size, so k parts hold at least the sizes
// of the first k-1.
func TestPartSizing(t *testing.T) {
	const MiB = 1 << 20
	for _, tc := range []struct {
		name     string
		base     int64
		expected int64
		wantSize int64
	}{
		{"unknown", 8 * MiB, -1, 8 * MiB},
		{"empty", 8 * MiB, 0, 8 * MiB},
		{"small", 8 * MiB, 1000, 8 * MiB},
		{"2GiB", 8 * MiB, 2 << 30, 8 * MiB},
		{"fits-exactly", 5 * MiB, 5 * MiB * 9999, 5 * MiB},
		{"one-byte-over", 5 * MiB, 5*MiB*9999 + 1, 6 * MiB},
		{"256GiB", 8 * MiB, 256 << 30, 27 * MiB},
		{"5TiB", 8 * MiB, 5 << 40, 525 * MiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size, growFrom, growEvery := partSizing(tc.base, tc.expected)
			if size != tc.wantSize {
				t.Errorf("part size = %d MiB, want %d MiB", size/MiB, tc.wantSize/MiB)
			}
			w := &writer{partSize: size, growFrom: growFrom, growEvery: growEvery}
			// Capacity of 10,000 parts: the first 9,999 at their size,
			// the last of any size.
			var capacity int64
			for n := int32(1); n < MaxParts; n++ {
				ps := w.partSizeFor(n)
				if ps < MinPartSize || ps > MaxPartSize {
					t.Fatalf("part %d: size %d outside S3's limits", n, ps)
				}
				capacity += ps
			}
			want := tc.expected
			if want < 0 {
				want = 5 << 40 // S3's largest object
			}
			if capacity < want {
				t.Errorf("9,999 parts hold %d bytes, need %d", capacity, want)
			}
		})
	}
}

// TestPartSizingOutgrowsHint: an object far larger than its expected size
// (a hint) still fits, with larger parts at the end.
func TestPartSizingOutgrowsHint(t *testing.T) {
	size, growFrom, growEvery := partSizing(MinPartSize, 1<<30)
	w := &writer{partSize: size, growFrom: growFrom, growEvery: growEvery}
	var capacity int64
	for n := int32(1); n < MaxParts; n++ {
		capacity += w.partSizeFor(n)
	}
	if capacity < 100<<30 {
		t.Errorf("an object 100 times its 1 GiB hint does not fit: %d bytes", capacity)
	}
	if w.partSizeFor(1) != MinPartSize || w.partSizeFor(9000) != MinPartSize {
		t.Errorf("parts grow before they must: %d, %d", w.partSizeFor(1), w.partSizeFor(9000))
	}
}
