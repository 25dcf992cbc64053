"""Hard-constraint PDE layers with a parallel mixture of experts (PI-SC / PI-HC / PI-HC-MoE).

Modules, one job each:
  gen_diffsorp, gen_navier_stokes, gen_heat  reference solvers;  datasets  seeded .npz cache
  nlls      structured residual r(w) = [f(Phi w + c); L w - y; lam w], its normal equations and Hessian
  lm        batched damped Levenberg-Marquardt (float64, per-problem masks)
  implicit  exact implicit-function-theorem backward (autograd.Function)
  problems  PDE specs (diffusion-sorption, heat, navier-stokes);  router  fixed partition + seeded sampling
  layer     HardConstraint (PI-HC) and HardConstraintMoE;  parallel  data / expert placements
  model, train, cli, plots  trainer and ``pde`` sub-command;  dist_check  process-count equivalence
Importing this package imports nothing heavy; it never imports verify/ or robust_train/.
"""
