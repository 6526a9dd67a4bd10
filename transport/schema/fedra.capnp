# The one wire format of Fedra. Every message of every strategy, plugins included, is an
# Envelope written with Cap'n Proto's standard stream framing (capnp::writeMessage), so that
# `capnp decode transport/schema/fedra.capnp Envelope < frame.bin` can read any frame.
#
# Evolution rules: fields are only ever added (new ordinals), never renumbered or retyped.
# `version` is field @0 and is checked first: a peer with another protocol version gets an
# error naming both versions instead of a misread message.
@0x8159e7ee9d2b3f8d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("fedra::wire");

struct Envelope {
  version @0 :UInt32;        # protocol version of the sender (transport/codec.h kProtocolVersion)
  kind @1 :Text;             # message kind, e.g. "hello", "welcome", "fedavg.fit"
  round @2 :UInt32;          # federated round the message belongs to (0 outside rounds)
  step @3 :UInt64;           # step within a round for step-driven strategies
  sender @4 :Text;           # "coordinator" or the worker's name
  requestId @5 :UInt64;      # a reply carries the id of its request; 0 for unsolicited messages
  tensors @6 :List(Tensor);  # named tensors, in the sender's order
  metrics @7 :List(Metric);  # scalar metrics (loss, example counts, timings)
  options @8 :List(Option);  # string options (instructions, configuration)
  error @9 :Error;           # set when the message reports a failure
  partial @10 :Bool;         # one part of a multi-message exchange: more messages of the same
                             # request follow (a reply in parts, or coordinator messages sent
                             # while the request is pending); the final reply has it false
}

struct Tensor {
  name @0 :Text;
  dtype @1 :DType;
  shape @2 :List(Int64);
  # The raw bytes in C order, little-endian, split into chunks because one Cap'n Proto Data
  # blob holds at most 2^29-1 bytes. The byte count over all chunks must equal
  # product(shape) * size(dtype); a receiver rejects the tensor otherwise.
  chunks @3 :List(Data);
}

enum DType {
  float32 @0;
  float64 @1;
  float16 @2;
  bfloat16 @3;
  int8 @4;
  uint8 @5;
  int16 @6;
  int32 @7;
  int64 @8;
  bool @9;
  complex64 @10;
  complex128 @11;
}

struct Metric {
  name @0 :Text;
  value @1 :Float64;
}

struct Option {
  key @0 :Text;
  value @1 :Text;
}

struct Error {
  kind @0 :ErrorKind;
  message @1 :Text;
}

enum ErrorKind {
  failed @0;
  overloaded @1;
  disconnected @2;
  unimplemented @3;
}
