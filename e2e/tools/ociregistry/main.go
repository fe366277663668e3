// Command ociregistry serves an in-memory OCI registry with the OCI 1.1 referrers API enabled.
//
// zot, the registry DESIGN.md names for the referrers API, is not served by the Go module proxy that
// this machine reaches, so the tests use go-containerregistry's registry instead: it implements
// `GET /v2/<name>/referrers/<digest>` and the `OCI-Subject` response header, which is what cosign v3
// needs to store sigstore bundles as referrers.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	quiet := flag.Bool("quiet", true, "do not log every request")
	flag.Parse()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	opts := []registry.Option{registry.WithReferrersSupport(true)}
	if *quiet {
		opts = append(opts, registry.Logger(log.New(io.Discard, "", 0)))
	}
	// The harness reads this line to learn the port when it asked for port 0.
	fmt.Printf("listening on %s\n", ln.Addr())
	if err := http.Serve(ln, registry.New(opts...)); err != nil {
		log.Fatal(err)
	}
}
