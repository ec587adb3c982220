// A Go program for the goroutine tracer's tests (tests/test_goroutines.py).
//
// It waits for a line on stdin before doing anything, so a tracer can attach
// first. Then main starts N workers (N is the first argument, 10 by default),
// each of which sleeps (WAITING), blocks on a channel until main closes it
// (WAITING), and reads a file (SYSCALL). One more goroutine blocks in a read(2)
// on a blocking pipe (SYSCALL) until main writes to it after the workers are done.
// Every goroutine returns (DEAD) before main exits; main prints "done N 1".
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	n := 10
	if len(os.Args) > 1 {
		var err error
		if n, err = strconv.Atoi(os.Args[1]); err != nil {
			fmt.Fprintln(os.Stderr, "usage: goroutines [N]")
			os.Exit(2)
		}
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		fmt.Fprintln(os.Stderr, "no start line on stdin:", err)
		os.Exit(2)
	}

	// syscall.Pipe, not os.Pipe: its fds stay blocking, so the reader waits in the
	// read system call itself rather than parking in Go's network poller.
	var pipe [2]int
	if err := syscall.Pipe(pipe[:]); err != nil {
		fmt.Fprintln(os.Stderr, "pipe:", err)
		os.Exit(1)
	}
	var reader sync.WaitGroup
	var piped int
	reader.Add(1)
	go func() {
		defer reader.Done()
		buf := make([]byte, 1)
		piped, _ = syscall.Read(pipe[0], buf)
	}()

	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Millisecond)
			<-release
			if _, err := os.ReadFile("/proc/self/stat"); err != nil {
				fmt.Fprintln(os.Stderr, "read:", err)
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()

	syscall.Write(pipe[1], []byte{1})
	reader.Wait()
	// Done() runs before a goroutine's end: wait until each one is DEAD (back on the
	// free list, no longer counted), so that exiting cannot cut a transition short.
	for runtime.NumGoroutine() > 1 {
		time.Sleep(time.Millisecond)
	}
	fmt.Println("done", n, piped)
}
