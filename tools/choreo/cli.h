/* cli.h: the parts of the choreo CLI that live in their own files. */
#ifndef CHOREO_CLI_H
#define CHOREO_CLI_H

/* "choreo events follow|timeline ...": argv[0] is "events". Returns the
 * exit code. */
int cli_events(int argc, char **argv);

#endif
