# Node entry point (the board runs main.py at boot): aiotkit sensor node.
import node

node.main()
