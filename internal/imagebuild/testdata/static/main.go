// Command static is a tiny program the imagebuild tests put in images.
package main

import "fmt"

var version = "dev"

func main() { fmt.Println("static", version) }
