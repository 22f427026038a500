// hello-go: the program of the go-app example recipe, a tiny HTTP service.
package main

import (
	"fmt"
	"log"
	"net/http"
)

func main() {
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "hello from dualbuild")
	})
	log.Fatal(http.ListenAndServe(":8080", nil))
}
