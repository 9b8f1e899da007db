/* pb_json.h: prints any protobuf-c message as one line of JSON, with field
 * names as in the .proto and enum values by name, the way grpcurl shows
 * them. For the CLI's output; not a general JSON encoder (no parsing). */
#ifndef CHOREO_PB_JSON_H
#define CHOREO_PB_JSON_H

#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

/* Writes msg to f as compact JSON (fields at their default value are left
 * out, as proto3 JSON does). */
void pb_json_print(FILE *f, const ProtobufCMessage *msg);

#endif
