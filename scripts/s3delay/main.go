// Command s3delay is an HTTP proxy in front of an S3 server that makes it
// look distant: every request waits -delay before it is forwarded, and
// every response body goes out over one link of -rate bytes per second
// shared by all connections (so parallel ranged GETs do not add up to more
// than the link). Requests and answers are forwarded unchanged, the Host
// header too, so that clients sign their requests for the proxy's address.
// scripts/bench-lazy.sh puts it in front of versitygw.
//
// It prints its address (HOST:PORT) on the first line of standard output
// once it listens, and serves until it is killed.
//
// Usage: go run ./scripts/s3delay -target http://127.0.0.1:7070 [-listen 127.0.0.1:0] [-delay 30ms] [-rate 125000000]
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/pe-project/pe/blockstore/s3/s3test"
)

func main() {
	target := flag.String("target", "", "the S3 server's endpoint, http://HOST:PORT (required)")
	listen := flag.String("listen", "127.0.0.1:0", "the address to listen on")
	delay := flag.Duration("delay", 0, "how long each request waits before it is forwarded")
	rate := flag.Int64("rate", 0, "the link's bandwidth for response bodies, bytes per second, shared by all connections (0: unlimited)")
	flag.Parse()
	if *target == "" || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	proxy, err := s3test.Proxy(*target)
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("s3delay: %v", err)
	}
	fmt.Println(l.Addr().String())
	log.Fatal(http.Serve(l, s3test.Delay(proxy, *delay, s3test.NewLink(*rate))))
}
