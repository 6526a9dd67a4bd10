// Worker-to-worker links and the ring all-reduce: real loopback sockets, each member on a thread
// of its own (a PeerHub is single-threaded, like a worker).
#include "tests/testing.h"

#include <optional>
#include <thread>

#include <torch/torch.h>

#include "core/kit/error.h"
#include "core/net/peer.h"
#include "tests/test_util.h"
#include "transport/tcp/connection.h"
#include "transport/tcp/tls.h"

using namespace fedra;
using namespace fedra::test;
namespace tcp = fedra::transport::tcp;
using std::chrono::milliseconds;

namespace {

std::vector<std::unique_ptr<PeerHub>> make_hubs(size_t n, const std::string& key, const std::string& pki = "") {
  std::vector<std::unique_ptr<PeerHub>> hubs;
  for (size_t i = 0; i < n; ++i) {
    PeerConfig pc;
    const std::string name = fmt::format("worker-{}", i);
    if (!pki.empty()) {
      tcp::TlsConfig files{pki + "/" + name + ".pem", pki + "/" + name + ".key", pki + "/ca.pem", ""};
      pc.tls_server = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kServer, files);
      pc.tls_client = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kClient, files);
    }
    hubs.push_back(std::make_unique<PeerHub>(name, pc, "127.0.0.1"));
    hubs.back()->set_key(key);
  }
  return hubs;
}

std::vector<PeerAddress> members_of(const std::vector<std::unique_ptr<PeerHub>>& hubs) {
  std::vector<PeerAddress> m;
  for (const auto& h : hubs) m.push_back({h->name(), h->address()});
  return m;
}

// Every member all-reduces `steps` steps of buckets of `sizes` floats (member i's values: a seeded
// draw times step + 1), starting the buckets in its own order; returns each member's sums,
// concatenated, per step, or the error it threw.
struct Outcome {
  std::vector<at::Tensor> sums;  // per step
  std::string error;
};
std::vector<Outcome> all_reduce(std::vector<std::unique_ptr<PeerHub>>& hubs, const std::vector<int64_t>& sizes,
                                int steps, uint64_t session) {
  const auto members = members_of(hubs);
  std::vector<Outcome> out(hubs.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < hubs.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        auto ring = hubs[r]->ring(members, r, session, milliseconds(5000));
        RingAllReduce ar(*ring, sizes.size());
        for (int s = 0; s < steps; ++s) {
          ar.begin_step(static_cast<uint64_t>(s));
          std::vector<at::Tensor> flats;
          for (size_t b = 0; b < sizes.size(); ++b) {
            auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * r + b);
            flats.push_back(at::randn({sizes[b]}, gen) * (s + 1));
          }
          for (size_t k = 0; k < sizes.size(); ++k) {
            const size_t b = r % 2 == 0 ? k : sizes.size() - 1 - k;  // neighbours start in opposite orders
            ar.start(b, flats[b]);
            ar.progress();
          }
          ar.finish(milliseconds(5000));
          std::vector<at::Tensor> parts;
          for (size_t b = 0; b < sizes.size(); ++b) {
            for (const auto& c : ar.result(b)) parts.push_back(c.values.clone());
          }
          out[r].sums.push_back(at::cat(parts));
        }
      } catch (const std::exception& e) {
        out[r].error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

at::Tensor expected_sum(size_t n, const std::vector<int64_t>& sizes, int step) {
  std::vector<at::Tensor> parts;
  for (size_t b = 0; b < sizes.size(); ++b) {
    at::Tensor sum = at::zeros({sizes[b]});
    for (size_t r = 0; r < n; ++r) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * r + b);
      sum += at::randn({sizes[b]}, gen) * (step + 1);
    }
    parts.push_back(sum);
  }
  return at::cat(parts);
}

// Connects to the hub's peer port from outside it and says hello with `key` and `session`; runs
// the hub until it refuses (5 s at most) and returns what the outsider was told.
std::string refusal(PeerHub& hub, const std::string& sender, const std::string& key, const std::string& session) {
  auto outsider = tcp::BlockingChannel::connect(tcp::parse_endpoint(hub.address()), {}, milliseconds(2000));
  transport::Envelope hello;
  hello.kind = peer::kHello;
  hello.sender = sender;
  hello.options = {{"key", key}, {"session", session}};
  outsider->send(hello);
  const uint64_t before = hub.refused();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (hub.refused() == before && std::chrono::steady_clock::now() < deadline) {
    hub.io().run_for(milliseconds(10));
    hub.io().restart();
  }
  try {
    const auto reply = outsider->receive(milliseconds(2000));
    return reply.error ? reply.error->message : reply.kind;
  } catch (const Error& e) {
    return e.what();
  }
}

}  // namespace

TEST_CASE("ring all-reduce over loopback links sums buckets of uneven sizes on 1 to 4 members") {
  // Buckets smaller than the ring (1 float), not a multiple of 16, and large.
  const std::vector<int64_t> sizes = {1, 17, 100, 1000, 40009};
  for (size_t n : {1, 2, 3, 4}) {
    INFO(n << " members");
    auto hubs = make_hubs(n, "secret");
    const auto out = all_reduce(hubs, sizes, 3, 1);
    for (size_t r = 0; r < n; ++r) {
      INFO("rank " << r << ": " << out[r].error);
      REQUIRE(out[r].error.empty());
      REQUIRE(out[r].sums.size() == 3);
      for (int s = 0; s < 3; ++s) {
        const double diff = (out[r].sums[static_cast<size_t>(s)] - expected_sum(n, sizes, s)).abs().max().item<double>();
        CHECK(diff < 1e-4);
      }
      // Every member holds the same bits: the sum is computed once per chunk and passed on.
      CHECK(torch::equal(out[r].sums[2], out[0].sums[2]));
    }
    // A second ring of the same members (the next round) forms on new links.
    const auto again = all_reduce(hubs, sizes, 1, 2);
    for (size_t r = 0; r < n; ++r) {
      INFO(again[r].error);
      CHECK(again[r].error.empty());
    }
  }
}

TEST_CASE("a non-finite gradient anywhere fails the ring step") {
  auto hubs = make_hubs(3, "secret");
  const auto members = members_of(hubs);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (size_t r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto ring = hubs[r]->ring(members, r, 1, milliseconds(5000));
        RingAllReduce ar(*ring, 1);
        ar.begin_step(0);
        at::Tensor flat = at::ones({300});
        if (r == 1) flat[250] = std::nan("");
        ar.start(0, flat);
        ar.finish(milliseconds(5000));
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  // The owner of the poisoned chunk sees it; its neighbours learn from the closed links.
  size_t named = 0;
  for (const auto& e : errors) {
    INFO(e);
    CHECK(!e.empty());
    named += contains(e, "not finite") ? 1 : 0;
  }
  CHECK(named >= 1);
}

TEST_CASE("an outsider without the job's key is refused and logged; an absent peer is named with its address") {
  auto hubs = make_hubs(1, "the-job-key");
  PeerHub& hub = *hubs[0];
  CHECK(contains(refusal(hub, "mallory", "guess", "1"), "wrong peer key"));
  CHECK(hub.refused() == 1);
  // The right key, but no ring session it could belong to.
  CHECK(contains(refusal(hub, "worker-7", "the-job-key", "soon"), "without a ring session"));
  CHECK(hub.refused() == 2);
  // A ring whose next member is not listening: the error names both workers and the address.
  asio::io_context io;
  tcp::Listener probe(io, tcp::parse_endpoint("127.0.0.1:0"), [](asio::ip::tcp::socket) {});
  const std::string dead = probe.local_endpoint().to_string();
  probe.close();
  std::string error;
  try {
    hub.ring({{hub.name(), hub.address()}, {"worker-9", dead}}, 0, 1, milliseconds(300));
  } catch (const Error& e) {
    error = e.what();
  }
  INFO(error);
  CHECK(contains(error, "worker-0 cannot link to its ring peer worker-9 at " + dead));
}

TEST_CASE("peer links under TLS: members of the job's CA form a ring; a certificate from another CA is refused") {
  TempDir dir;
  tcp::make_test_pki({dir / "pki", {}, {"worker-0", "worker-1", "worker-2"}, 1});
  tcp::make_test_pki({dir / "other", {}, {"worker-1"}, 1});
  auto hubs = make_hubs(3, "secret", dir / "pki");
  const auto out = all_reduce(hubs, {5000, 33}, 2, 1);
  for (const auto& o : out) {
    INFO(o.error);
    CHECK(o.error.empty());
  }
  // An outsider with a certificate of another CA, even under a member's name.
  tcp::TlsConfig files{dir / "other/worker-1.pem", dir / "other/worker-1.key", dir / "other/ca.pem", ""};
  auto tls = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kClient, files);
  const uint64_t before = hubs[0]->refused();
  std::thread outsider([&] {
    try {
      tcp::BlockingChannel::connect(tcp::parse_endpoint(hubs[0]->address()), {}, milliseconds(2000), nullptr, tls);
    } catch (const Error&) {
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (hubs[0]->refused() == before && std::chrono::steady_clock::now() < deadline) {
    hubs[0]->io().run_for(milliseconds(10));
    hubs[0]->io().restart();
  }
  outsider.join();
  CHECK(hubs[0]->refused() == before + 1);

  // A member whose certificate is not for its name (here worker-2's, under worker-1's name): the
  // worker linking to it says which link failed, why, and what to do.
  std::vector<std::unique_ptr<PeerHub>> pair;
  for (const char* cert : {"worker-0", "worker-2"}) {
    PeerConfig pc;
    tcp::TlsConfig f{dir / ("pki/" + std::string(cert) + ".pem"), dir / ("pki/" + std::string(cert) + ".key"),
                     dir / "pki/ca.pem", ""};
    pc.tls_server = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kServer, f);
    pc.tls_client = std::make_shared<tcp::TlsContext>(tcp::TlsRole::kClient, f);
    pair.push_back(std::make_unique<PeerHub>(fmt::format("worker-{}", pair.size()), pc, "127.0.0.1"));
    pair.back()->set_key("secret");
  }
  const auto bad = all_reduce(pair, {100}, 1, 1);
  INFO(bad[0].error);
  CHECK(contains(bad[0].error, "worker-0 cannot link to its ring peer worker-1 at " + pair[1]->address()));
  CHECK(contains(bad[0].error, "fedra certs"));
}

TEST_CASE("a chain links each member to the next only; frames go up it and come back down the same links") {
  // Three members like pipeline stages: 0 sends a value up; each member adds its rank and passes it
  // on; the last sends the total back down, and each member passes it down in turn.
  auto hubs = make_hubs(3, "secret");
  const auto members = members_of(hubs);
  struct Seen {
    std::string error, shape, kinds, past_ends;
    double down = -1;
    uint64_t sent = 0, received = 0;
  };
  std::vector<Seen> seen(3);
  const auto frame = [](const std::string& kind, double value) {
    transport::Envelope env;
    env.kind = kind;
    env.metrics = {{"value", value}};
    return env;
  };
  const auto value = [](const transport::Envelope& env) { return env.metrics.at(0).second; };
  std::vector<std::thread> threads;
  for (size_t r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      Seen& me = seen[r];
      try {
        auto chain = hubs[r]->ring(members, r, 1, milliseconds(5000), /*closed=*/false);
        me.shape = fmt::format("{}{} {}", chain->has_prev() ? "p" : "-", chain->has_next() ? "n" : "-", chain->describe());
        std::optional<transport::Envelope> from_prev, from_next;
        chain->on_frame([&](transport::Envelope&& env) { from_prev = std::move(env); });
        chain->on_frame_from_next([&](transport::Envelope&& env) { from_next = std::move(env); });
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        double up = 0;
        if (chain->has_prev()) {
          chain->wait([&] { return from_prev.has_value(); }, deadline, "the value from below");
          me.kinds += from_prev->kind;
          up = value(*from_prev);
        }
        up += static_cast<double>(r);
        if (chain->has_next()) {
          chain->send(frame("up", up));
          chain->wait([&] { return from_next.has_value(); }, deadline, "the total from above");
          me.kinds += from_next->kind;
          me.down = value(*from_next);
        } else {
          me.down = up;
        }
        bool written = !chain->has_prev();
        if (chain->has_prev()) chain->send_prev(frame("down", me.down), [&] { written = true; });
        chain->wait([&] { return written; }, deadline, "the total on its way down");
        me.sent = chain->bytes_sent();
        me.received = chain->bytes_received();
        // Nothing goes past either end of a chain.
        try {
          if (r == 0) chain->send_prev(frame("x", 0));
          if (r == 2) chain->send(frame("x", 0));
        } catch (const Error& e) {
          me.past_ends = e.what();
        }
      } catch (const std::exception& e) {
        me.error = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t r = 0; r < 3; ++r) {
    INFO("member " << r << ": " << seen[r].error);
    CHECK(seen[r].error.empty());
    CHECK(seen[r].down == 3.0);  // 0 + 1 + 2, back at every member
    CHECK(seen[r].sent > 0);
    CHECK(seen[r].received > 0);
  }
  CHECK(seen[0].shape == "-n worker-0 -> worker-1");
  CHECK(seen[1].shape == "pn worker-0 -> worker-1 -> worker-2");
  CHECK(seen[2].shape == "p- worker-1 -> worker-2");
  CHECK(seen[0].kinds == "down");
  CHECK(seen[1].kinds == "updown");
  CHECK(seen[2].kinds == "up");
  CHECK(contains(seen[0].past_ends, "worker-0 has no previous peer to send 'x' to"));
  CHECK(contains(seen[2].past_ends, "worker-2 has no next peer to send 'x' to"));
  CHECK(seen[1].past_ends.empty());

  // A chain whose next member fails: the member below it fails at once, naming the link.
  auto pair = make_hubs(2, "secret");
  const auto two = members_of(pair);
  std::string error;
  std::thread top([&] {
    try {
      auto chain = pair[1]->ring(two, 1, 2, milliseconds(5000), false);
      std::this_thread::sleep_for(milliseconds(200));
      chain->abort("stage 1 failed");
    } catch (const std::exception&) {
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    auto chain = pair[0]->ring(two, 0, 2, milliseconds(5000), false);
    chain->wait([] { return false; }, std::chrono::steady_clock::now() + std::chrono::seconds(5), "a gradient");
  } catch (const Error& e) {
    error = e.what();
  }
  top.join();
  INFO(error);
  CHECK(contains(error, "the link to worker-1 (" + pair[1]->address() + ") closed"));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));  // not at the 5 s deadline
}

TEST_CASE("a member that cannot form its links tells the member that linked to it, which fails at once") {
  // worker-1 is told a dead address for worker-0 (say, a wrong --advertise); worker-0 links to
  // worker-1 fine and waits for worker-1's link, which never comes.
  auto hubs = make_hubs(2, "secret");
  asio::io_context io;
  tcp::Listener probe(io, tcp::parse_endpoint("127.0.0.1:0"), [](asio::ip::tcp::socket) {});
  const std::string dead = probe.local_endpoint().to_string();
  probe.close();
  std::string error0, error1;
  std::thread one([&] {
    try {
      hubs[1]->ring({{"worker-0", dead}, {"worker-1", hubs[1]->address()}}, 1, 3, milliseconds(1000));
    } catch (const Error& e) {
      error1 = e.what();
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    hubs[0]->ring(members_of(hubs), 0, 3, milliseconds(8000));
  } catch (const Error& e) {
    error0 = e.what();
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  one.join();
  INFO(error0);
  INFO(error1);
  CHECK(contains(error1, "worker-1 cannot link to its ring peer worker-0 at " + dead));
  CHECK(contains(error0, "worker-0 cannot link to its ring peer worker-1 at " + hubs[1]->address() +
                             ": worker worker-1 could not join ring session 3: worker worker-1 cannot link to its ring "
                             "peer worker-0 at " + dead));
  CHECK(took < std::chrono::seconds(4));  // not at its 8 s timeout
}
