"""End-to-end tests of the roamgate command line, run as a real process."""
