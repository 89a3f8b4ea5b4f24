;; A WASI preview 1 command that never ends: for timeout and fuel tests.
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))
