from agent_supervise.cli import main

main()
