"""`sttrl serve`: test-time RL behind an OpenAI-compatible endpoint (docs/SERVE.md).

main.py (flags, bind, build the engine, run uvicorn), app.py (the routes), schema.py (request
bodies and limits), worker.py (the thread that owns the engine), answer.py (one request's
votes, update and answer), metrics.py (Prometheus counters).
"""
