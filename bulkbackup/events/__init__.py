"""`bulkbackup events`: GH Archive's hour files read as marks of what changed (DESIGN.md
"Events"). rules (which event changes what), hours (hour names), lines (one hour's stream of
events, bounded), source (paths, stdin, the hours of events.url), reader (hours -> marks in
Redis, --follow), report (what the command prints). Redis's side is queue/events.py.
"""
