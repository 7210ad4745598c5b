// httpget: a static HTTP(S) client for the test cluster's busybox image, because busybox's
// wget neither verifies TLS certificates nor completes a handshake with Go's TLS servers.
//
//	httpget [-ca FILE] [-token-file FILE] [-timeout 5s] URL
//
// Prints the response body and exits 0 on a 2xx answer; on any other status prints
// "HTTP <code>" and the body to stderr and exits 3; exits 1 when the request fails (DNS,
// connection, TLS verification) and 2 on bad arguments. Inside a pod,
// `httpget -sa https://kubernetes.default.svc/api` uses the pod's ServiceAccount CA and
// token (verifying the API server's certificate against that CA).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	ca := flag.String("ca", "", "PEM file of the CA that must have signed the server's certificate")
	tokenFile := flag.String("token-file", "", "send the file's content as a Bearer token")
	sa := flag.Bool("sa", false, "use the pod's ServiceAccount CA and token ("+saDir+")")
	timeout := flag.Duration("timeout", 5*time.Second, "whole-request timeout")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: httpget [-sa] [-ca FILE] [-token-file FILE] [-timeout 5s] URL")
		os.Exit(2)
	}
	if *sa {
		*ca, *tokenFile = saDir+"/ca.crt", saDir+"/token"
	}
	tlsConfig := &tls.Config{}
	if *ca != "" {
		pem, err := os.ReadFile(*ca)
		if err != nil {
			fmt.Fprintln(os.Stderr, "httpget:", err)
			os.Exit(2)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fmt.Fprintf(os.Stderr, "httpget: no certificate in %s\n", *ca)
			os.Exit(2)
		}
		tlsConfig.RootCAs = pool
	}
	req, err := http.NewRequest(http.MethodGet, flag.Arg(0), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpget:", err)
		os.Exit(2)
	}
	if *tokenFile != "" {
		token, err := os.ReadFile(*tokenFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "httpget:", err)
			os.Exit(2)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpget:", err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Fprintln(os.Stderr, "httpget: reading the body:", err)
		os.Exit(1)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(os.Stderr, "HTTP %d\n%s\n", resp.StatusCode, body)
		os.Exit(3)
	}
	os.Stdout.Write(body)
}
