package s3_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	s3api "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/custodyhq/custody/collector/store"
	s3store "github.com/custodyhq/custody/collector/store/s3"
	"github.com/custodyhq/custody/collector/store/s3/s3test"
)

// BenchmarkStore writes 512 MiB through the store in 4 MiB writes (the
// agent's chunk size) and, for comparison, with one plain PutObject of the
// SDK: the store's own cost, without agent or collector. The server keeps
// its data on a tmpfs.
func BenchmarkStore(b *testing.B) {
	const size, write = 512 << 20, 4 << 20
	srv := s3test.StartIn(b, "/dev/shm")
	bucket := srv.Bucket(b, false)
	block := randBytes(1, write)
	whole := sha256.New()
	for range size / write {
		whole.Write(block)
	}
	sum := whole.Sum(nil)
	b.Run("store", func(b *testing.B) {
		s := newStore(b, srv, s3store.Config{Bucket: bucket, Endpoint: srv.Endpoint, PathStyle: true, Region: s3test.Region})
		b.SetBytes(size)
		for i := range b.N {
			w, err := s.Create(b.Context(), fmt.Sprintf("c/a/x/%d-%d", b.N, i), store.CreateOptions{ExpectedSize: size})
			if err != nil {
				b.Fatal(err)
			}
			for range size / write {
				if _, err := w.Write(block); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := w.Commit(b.Context(), size, sum); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("putobject", func(b *testing.B) {
		client := srv.Client()
		data := bytes.Repeat(block, size/write)
		b.SetBytes(size)
		for i := range b.N {
			if _, err := client.PutObject(b.Context(), &s3api.PutObjectInput{Bucket: &bucket, Key: aws.String(fmt.Sprint("put/", b.N, "-", i)), Body: bytes.NewReader(data)}); err != nil {
				b.Fatal(err)
			}
		}
	})

}
