// SPDX-License-Identifier: LGPL-2.1-or-later

// varlink-check: the reference Varlink implementation (github.com/varlink/go, Debian's
// golang-github-varlink-go-dev) against evfdd, for tests/test-varlink-go.py.
//
//	varlink-check idl FILE        parse FILE with the reference IDL parser; exit 1 if it refuses it
//	varlink-check call ADDRESS PID  on ADDRESS ("unix:/path"): GetInfo, then GetInterfaceDescription of
//	                              every interface listed, each parsed with the reference IDL parser and
//	                              named as asked; then io.evfdd.Status, whose pid must be PID
//
// Every step prints one line; the first failure exits 1.
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/varlink/go/varlink"
	"github.com/varlink/go/varlink/idl"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func checkFile(path string) {
	text, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	parsed, err := idl.New(string(text))
	if err != nil {
		fail("%s: the reference parser refuses it: %v", path, err)
	}
	fmt.Printf("%s: interface %s, %d methods, %d types, %d errors\n", path, parsed.Name, len(parsed.Methods),
		len(parsed.Aliases), len(parsed.Errors))
}

func checkService(address string, pid int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	conn, err := varlink.NewConnection(ctx, address)
	if err != nil {
		fail("connecting to %s: %v", address, err)
	}
	defer conn.Close()

	var vendor, product, version, url string
	var interfaces []string
	if err := conn.GetInfo(ctx, &vendor, &product, &version, &url, &interfaces); err != nil {
		fail("GetInfo: %v", err)
	}
	fmt.Printf("GetInfo: vendor %q product %q version %q, interfaces %v\n", vendor, product, version, interfaces)
	if len(interfaces) < 2 {
		fail("GetInfo lists %d interfaces, expected org.varlink.service and io.evfdd", len(interfaces))
	}
	for _, name := range interfaces {
		desc, err := conn.GetInterfaceDescription(ctx, name)
		if err != nil {
			fail("GetInterfaceDescription(%s): %v", name, err)
		}
		parsed, err := idl.New(desc)
		if err != nil {
			fail("the description of %s: the reference parser refuses it: %v", name, err)
		}
		if parsed.Name != name {
			fail("GetInterfaceDescription(%s) describes %s", name, parsed.Name)
		}
		fmt.Printf("%s: %d methods, %d types, %d errors\n", name, len(parsed.Methods), len(parsed.Aliases),
			len(parsed.Errors))
	}

	var status struct {
		Pid   int64  `json:"pid"`
		State string `json:"state"`
	}
	if err := conn.Call(ctx, "io.evfdd.Status", nil, &status); err != nil {
		fail("io.evfdd.Status: %v", err)
	}
	if status.Pid != pid {
		fail("io.evfdd.Status: pid %d, expected %d", status.Pid, pid)
	}
	fmt.Printf("io.evfdd.Status: pid %d, state %s\n", status.Pid, status.State)
}

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "idl":
		checkFile(os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "call":
		pid, err := strconv.ParseInt(os.Args[3], 10, 64)
		if err != nil {
			fail("PID %q: %v", os.Args[3], err)
		}
		checkService(os.Args[2], pid)
	default:
		fmt.Fprintln(os.Stderr, "usage: varlink-check idl FILE | varlink-check call ADDRESS PID")
		os.Exit(2)
	}
}
